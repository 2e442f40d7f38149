"""jaxpenalties: exact, jit-compiled regularisation penalties and divergences for JAX.

``import jaxpenalties as jp`` gives every public name.
"""

from jaxpenalties.divergences import entropy as entropy
from jaxpenalties.divergences import js_divergence as js_divergence
from jaxpenalties.divergences import kl_divergence as kl_divergence
from jaxpenalties.estimators import kl_estimate as kl_estimate

__version__ = "0.1.0.dev0"

__all__ = [
    "entropy",
    "js_divergence",
    "kl_divergence",
    "kl_estimate",
]
