"""Large vocabularies: divergences and token log-probabilities computed
through a linear head in chunks (the [N, V] logits never stored), and top-k
(sparse) teachers, dense or fused.

The same functions as ``jp.fused_linear_kl_divergence`` and the others listed
in ``__all__``.
"""

from jaxpenalties.large_vocab._by_name import (
    fused_linear_divergence as fused_linear_divergence,
)
from jaxpenalties.large_vocab._by_name import (
    fused_linear_sparse_divergence as fused_linear_sparse_divergence,
)
from jaxpenalties.large_vocab._by_name import sparse_divergence as sparse_divergence
from jaxpenalties.large_vocab._fused import (
    fused_linear_js_divergence as fused_linear_js_divergence,
)
from jaxpenalties.large_vocab._fused import (
    fused_linear_kl_divergence as fused_linear_kl_divergence,
)
from jaxpenalties.large_vocab._fused_sparse import (
    fused_linear_sparse_js_divergence as fused_linear_sparse_js_divergence,
)
from jaxpenalties.large_vocab._fused_sparse import (
    fused_linear_sparse_kl_divergence as fused_linear_sparse_kl_divergence,
)
from jaxpenalties.large_vocab._sparse import (
    sparse_js_divergence as sparse_js_divergence,
)
from jaxpenalties.large_vocab._sparse import (
    sparse_kl_divergence as sparse_kl_divergence,
)
from jaxpenalties.large_vocab._token_logprobs import (
    fused_linear_token_logprobs as fused_linear_token_logprobs,
)

__all__ = [
    "fused_linear_divergence",
    "fused_linear_js_divergence",
    "fused_linear_kl_divergence",
    "fused_linear_sparse_divergence",
    "fused_linear_sparse_js_divergence",
    "fused_linear_sparse_kl_divergence",
    "fused_linear_token_logprobs",
    "sparse_divergence",
    "sparse_js_divergence",
    "sparse_kl_divergence",
]
