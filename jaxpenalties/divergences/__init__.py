"""Dense divergences over a distribution axis: KL (forward, reverse,
symmetric), generalised Jensen-Shannon and entropy, from log-probabilities or
logits, with one exact per-position kernel (``jaxpenalties._core.kernel``).

The same functions as ``jp.kl_divergence``, ``jp.js_divergence`` and
``jp.entropy``.
"""

from jaxpenalties.divergences._entropy import entropy as entropy
from jaxpenalties.divergences._js import js_divergence as js_divergence
from jaxpenalties.divergences._kl import kl_divergence as kl_divergence

__all__ = ["entropy", "js_divergence", "kl_divergence"]
