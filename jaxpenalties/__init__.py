"""jaxpenalties: exact, jit-compiled regularisation penalties and divergences for JAX.

``import jaxpenalties as jp`` gives every public name. The same functions are
grouped by family in the namespaces ``jp.divergences``, ``jp.large_vocab``,
``jp.rl``, ``jp.penalties`` and ``jp.training`` (one folder each).
"""

from jaxpenalties.divergences import alpha_divergence as alpha_divergence
from jaxpenalties.divergences import entropy as entropy
from jaxpenalties.divergences import js_divergence as js_divergence
from jaxpenalties.divergences import kl_divergence as kl_divergence
from jaxpenalties.divergences import skew_kl_divergence as skew_kl_divergence
from jaxpenalties.divergences import total_variation as total_variation
from jaxpenalties.divergences import uld_distance as uld_distance
from jaxpenalties.large_vocab import (
    fused_linear_divergence as fused_linear_divergence,
)
from jaxpenalties.large_vocab import (
    fused_linear_js_divergence as fused_linear_js_divergence,
)
from jaxpenalties.large_vocab import (
    fused_linear_kl_divergence as fused_linear_kl_divergence,
)
from jaxpenalties.large_vocab import (
    fused_linear_sparse_divergence as fused_linear_sparse_divergence,
)
from jaxpenalties.large_vocab import (
    fused_linear_sparse_js_divergence as fused_linear_sparse_js_divergence,
)
from jaxpenalties.large_vocab import (
    fused_linear_sparse_kl_divergence as fused_linear_sparse_kl_divergence,
)
from jaxpenalties.large_vocab import (
    fused_linear_token_logprobs as fused_linear_token_logprobs,
)
from jaxpenalties.large_vocab import sparse_divergence as sparse_divergence
from jaxpenalties.large_vocab import sparse_js_divergence as sparse_js_divergence
from jaxpenalties.large_vocab import sparse_kl_divergence as sparse_kl_divergence
from jaxpenalties.penalties import consistency as consistency
from jaxpenalties.penalties import elastic_net as elastic_net
from jaxpenalties.penalties import gradient_penalty as gradient_penalty
from jaxpenalties.penalties import (
    interpolated_gradient_penalty as interpolated_gradient_penalty,
)
from jaxpenalties.penalties import l1 as l1
from jaxpenalties.penalties import l2 as l2
from jaxpenalties.penalties import mmd as mmd
from jaxpenalties.penalties import orthogonality as orthogonality
from jaxpenalties.penalties import (
    output_magnitude_penalty as output_magnitude_penalty,
)
from jaxpenalties.rl import KLController as KLController
from jaxpenalties.rl import adaptive_kl_controller as adaptive_kl_controller
from jaxpenalties.rl import aggregate as aggregate
from jaxpenalties.rl import fixed_kl_controller as fixed_kl_controller
from jaxpenalties.rl import kl_estimate as kl_estimate
from jaxpenalties.rl import kl_penalized_rewards as kl_penalized_rewards
from jaxpenalties.training import L2SPState as L2SPState
from jaxpenalties.training import Penalty as Penalty
from jaxpenalties.training import PenaltyGradientState as PenaltyGradientState
from jaxpenalties.training import add_elastic_net_decay as add_elastic_net_decay
from jaxpenalties.training import add_l1_decay as add_l1_decay
from jaxpenalties.training import add_l2_sp_decay as add_l2_sp_decay
from jaxpenalties.training import add_penalty_gradient as add_penalty_gradient
from jaxpenalties.training import check_finite as check_finite
from jaxpenalties.training import regularize as regularize

__version__ = "0.1.0"

__all__ = [
    "KLController",
    "L2SPState",
    "Penalty",
    "PenaltyGradientState",
    "adaptive_kl_controller",
    "add_elastic_net_decay",
    "add_l1_decay",
    "add_l2_sp_decay",
    "add_penalty_gradient",
    "aggregate",
    "alpha_divergence",
    "check_finite",
    "consistency",
    "elastic_net",
    "entropy",
    "fixed_kl_controller",
    "fused_linear_divergence",
    "fused_linear_js_divergence",
    "fused_linear_kl_divergence",
    "fused_linear_sparse_divergence",
    "fused_linear_sparse_js_divergence",
    "fused_linear_sparse_kl_divergence",
    "fused_linear_token_logprobs",
    "gradient_penalty",
    "interpolated_gradient_penalty",
    "js_divergence",
    "kl_divergence",
    "kl_estimate",
    "kl_penalized_rewards",
    "l1",
    "l2",
    "mmd",
    "orthogonality",
    "output_magnitude_penalty",
    "regularize",
    "skew_kl_divergence",
    "sparse_divergence",
    "sparse_js_divergence",
    "sparse_kl_divergence",
    "total_variation",
    "uld_distance",
]
