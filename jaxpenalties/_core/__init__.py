"""Private: the ground every family stands on, importing none of them.

The per-position divergence kernel (:mod:`.kernel`, with :mod:`.normalisation`
and :mod:`.kl_values`), the chunking plan of the large-vocabulary heads
(:mod:`.chunking`), the argument checks (:mod:`.checks`,
:mod:`.divergence_checks`), dtype and reduction numerics (:mod:`.numerics`),
pytree helpers (:mod:`.trees`) and the shared types (:mod:`.types`).
"""
