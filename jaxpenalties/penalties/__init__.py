"""Penalties of parameters and representations: L1, L2 (also towards a
centre, L2-SP), elastic net, orthogonality, consistency, gradient penalties
and the kernel MMD between two sets of representations.

The same functions as ``jp.l1`` and the others listed in ``__all__``.
"""

from jaxpenalties.penalties._constraints import consistency as consistency
from jaxpenalties.penalties._constraints import orthogonality as orthogonality
from jaxpenalties.penalties._gradient import gradient_penalty as gradient_penalty
from jaxpenalties.penalties._gradient import (
    interpolated_gradient_penalty as interpolated_gradient_penalty,
)
from jaxpenalties.penalties._gradient import (
    output_magnitude_penalty as output_magnitude_penalty,
)
from jaxpenalties.penalties._mmd import mmd as mmd
from jaxpenalties.penalties._norms import elastic_net as elastic_net
from jaxpenalties.penalties._norms import l1 as l1
from jaxpenalties.penalties._norms import l2 as l2

__all__ = [
    "consistency",
    "elastic_net",
    "gradient_penalty",
    "interpolated_gradient_penalty",
    "l1",
    "l2",
    "mmd",
    "orthogonality",
    "output_magnitude_penalty",
]
