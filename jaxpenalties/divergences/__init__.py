"""Dense divergences over a distribution axis: KL (forward, reverse,
symmetric), generalised Jensen-Shannon, total variation, Amari's
α-divergence, skew KL, ULD (vocabularies of different sizes) and entropy,
from log-probabilities or logits, with one exact per-position kernel
(``jaxpenalties._core.kernel``).

The same functions as ``jp.kl_divergence``, ``jp.js_divergence`` and the
others listed in ``__all__``.
"""

from jaxpenalties.divergences._entropy import entropy as entropy
from jaxpenalties.divergences._f_divergences import (
    alpha_divergence as alpha_divergence,
)
from jaxpenalties.divergences._f_divergences import (
    skew_kl_divergence as skew_kl_divergence,
)
from jaxpenalties.divergences._f_divergences import total_variation as total_variation
from jaxpenalties.divergences._js import js_divergence as js_divergence
from jaxpenalties.divergences._kl import kl_divergence as kl_divergence
from jaxpenalties.divergences._uld import uld_distance as uld_distance

__all__ = [
    "alpha_divergence",
    "entropy",
    "js_divergence",
    "kl_divergence",
    "skew_kl_divergence",
    "total_variation",
    "uld_distance",
]
