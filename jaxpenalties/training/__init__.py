"""Into the training step: ``regularize`` (a loss plus weighted penalties,
with per-term metrics), optax transforms that add a penalty's gradient, and
``check_finite``.

The same names as ``jp.regularize`` and the others listed in ``__all__``.
"""

from jaxpenalties.training._decay import L2SPState as L2SPState
from jaxpenalties.training._decay import add_elastic_net_decay as add_elastic_net_decay
from jaxpenalties.training._decay import add_l1_decay as add_l1_decay
from jaxpenalties.training._decay import add_l2_sp_decay as add_l2_sp_decay
from jaxpenalties.training._penalty import Penalty as Penalty
from jaxpenalties.training._penalty_gradient import (
    PenaltyGradientState as PenaltyGradientState,
)
from jaxpenalties.training._penalty_gradient import (
    add_penalty_gradient as add_penalty_gradient,
)
from jaxpenalties.training._regularize import regularize as regularize
from jaxpenalties.training._validation import check_finite as check_finite

__all__ = [
    "L2SPState",
    "Penalty",
    "PenaltyGradientState",
    "add_elastic_net_decay",
    "add_l1_decay",
    "add_l2_sp_decay",
    "add_penalty_gradient",
    "check_finite",
    "regularize",
]
