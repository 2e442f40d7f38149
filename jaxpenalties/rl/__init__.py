"""Reinforcement learning from feedback: sampled-token KL estimators, loss
aggregation over tokens and sequences, and KL controllers with KL-penalised
rewards.

The same functions as ``jp.kl_estimate``, ``jp.aggregate`` and the others
listed in ``__all__``.
"""

from jaxpenalties.rl._aggregation import aggregate as aggregate
from jaxpenalties.rl._estimators import kl_estimate as kl_estimate
from jaxpenalties.rl._kl_control import KLController as KLController
from jaxpenalties.rl._kl_control import (
    adaptive_kl_controller as adaptive_kl_controller,
)
from jaxpenalties.rl._kl_control import fixed_kl_controller as fixed_kl_controller
from jaxpenalties.rl._kl_control import (
    kl_penalized_rewards as kl_penalized_rewards,
)

__all__ = [
    "KLController",
    "adaptive_kl_controller",
    "aggregate",
    "fixed_kl_controller",
    "kl_estimate",
    "kl_penalized_rewards",
]
