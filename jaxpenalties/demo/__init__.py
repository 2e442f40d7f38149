"""Catastrophic forgetting on real data, and the two penalties that prevent it.

Run it with ``python -m jaxpenalties.demo`` (needs the ``demo`` extra:
``pip install 'jaxpenalties[demo]'``; about half a minute on two CPU cores).

The experiment uses scikit-learn's handwritten digits (``load_digits``, shipped
with scikit-learn, no download):

1. **Pre-train** a small MLP (flax.linen) on the *old task*: the digits 0-4.
2. **Fine-tune** it on the *new task*: the digits 5-9, never showing it an old
   digit again. Four settings, each from the same pre-trained weights:

   * ``fine-tune``: plain cross-entropy. The model forgets the old digits
     completely (old-task accuracy falls to about 0).
   * ``+ KL to base``: cross-entropy + w · KL(P_base ‖ P_model) on the new-task
     inputs (the frozen base model's predictions as soft targets, "Learning
     without Forgetting", Li and Hoiem 2016), with
     ``jp.Penalty(jp.kl_divergence, inputs=("base_logprobs", "logprobs"))``.
   * ``+ L2-SP``: cross-entropy + w · ‖θ − θ_base‖² (Li et al., Explicit
     Inductive Bias for Transfer Learning with Convolutional Networks, 2018), with
     ``jp.Penalty(jp.l2, inputs=("params",), kwargs={"center": base_params})``.
   * ``+ both``.

3. **Report** for each setting the accuracy on held-out old digits and new
   digits (a 10-way prediction: an old digit only counts if the model still
   prefers an old class for it) and KL(P_base ‖ P_model) on held-out old digits,
   i.e. how far the fine-tuned model has drifted from the base model where it
   used to be right. A plot of these quantities over fine-tuning steps is saved.

All four settings share **one** jitted train step built from
``jp.regularize(loss_fn, penalties)``: a setting is just a different
``weights={"kl_to_base": ..., "l2_sp": ...}`` argument (a weight of 0 switches a
penalty off), and changing weights never recompiles. The per-penalty metrics in
``aux["penalties"]`` (value, weight, contribution) are shown in the progress bar.

The direction of the KL matters. ``jp.kl_divergence(p, q)`` is KL(P‖Q); the
demo puts the base model first, KL(P_base ‖ P_model) (mode covering: the model
has to keep probability wherever the base model had some, so the old classes
stay reachable). The reverse, KL(P_model ‖ P_base), forbids probability where
the base model had none, i.e. exactly on the new classes, and then blocks
learning the new task at any weight strong enough to prevent forgetting.

Flags: ``--steps N`` fine-tuning steps per setting, ``--quick`` (a small run, for
tests), ``--out DIR`` where the plot goes (default ``demo_output``), ``--seed``.
"""

from jaxpenalties.demo._experiment import main as main
from jaxpenalties.demo._experiment import run as run
from jaxpenalties.demo._report import format_table as format_table
from jaxpenalties.demo._report import plot as plot
from jaxpenalties.demo._setup import NUM_CLASSES as NUM_CLASSES
from jaxpenalties.demo._setup import OLD_CLASSES as OLD_CLASSES
from jaxpenalties.demo._setup import SETTINGS as SETTINGS
from jaxpenalties.demo._setup import load_data as load_data
from jaxpenalties.demo._setup import loss_fn_with_aux as loss_fn_with_aux
from jaxpenalties.demo._setup import make_evaluate as make_evaluate
from jaxpenalties.demo._setup import make_loss_fn as make_loss_fn
from jaxpenalties.demo._setup import make_model as make_model
from jaxpenalties.demo._setup import make_penalties as make_penalties
from jaxpenalties.demo._setup import make_train_step as make_train_step

__all__ = [
    "NUM_CLASSES",
    "OLD_CLASSES",
    "SETTINGS",
    "format_table",
    "load_data",
    "loss_fn_with_aux",
    "main",
    "make_evaluate",
    "make_loss_fn",
    "make_model",
    "make_penalties",
    "make_train_step",
    "plot",
    "run",
]
