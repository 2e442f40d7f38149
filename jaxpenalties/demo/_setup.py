"""Data, model, loss, penalties and train step of the demo (``jaxpenalties.demo``).

The building blocks of ``python -m jaxpenalties.demo``, re-exported there:
scikit-learn's digits split into an old task (0-4) and a new task (5-9), a
flax.linen MLP, its loss in the ``regularize`` form, the two penalties against
forgetting (KL to the base model, L2-SP), one jitted train step for every
setting and a held-out evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxpenalties as jp

Params = Any  # the model's flax params pytree
Batch = Mapping[str, Any]  # a batch: named arrays
Outputs = Mapping[str, Any]  # a loss's named auxiliary outputs

OLD_CLASSES = (0, 1, 2, 3, 4)
NUM_CLASSES = 10

#: The four fine-tuning settings: a label and the weight of each penalty.
SETTINGS: dict[str, dict[str, Any]] = {
    "fine-tune": {"kl_to_base": 0.0, "l2_sp": 0.0},
    "+ KL to base": {"kl_to_base": 0.3, "l2_sp": 0.0},
    "+ L2-SP": {"kl_to_base": 0.0, "l2_sp": 0.1},
    "+ both": {"kl_to_base": 0.3, "l2_sp": 0.02},
}


def demo_imports() -> tuple[Any, Any, Any, Any]:
    """Imports the demo extra's packages with a helpful error when missing."""
    try:
        import flax.linen as nn
        import sklearn.datasets
        import sklearn.model_selection
        import tqdm
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The demo needs the `demo` extra: pip install 'jaxpenalties[demo]' "
            f"({error})."
        ) from error
    return nn, sklearn, tqdm, Figure


# ----------------------------------------------------------------------------
# Data and model
# ----------------------------------------------------------------------------


def load_data(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 8×8 digits split into old/new task and train/test.

    Returns:
      A dict with keys ``"old_train"``, ``"new_train"``, ``"old_test"``,
      ``"new_test"``, each an ``(x, y)`` pair: ``x`` float32 [n, 64] in [0, 1],
      ``y`` int32 [n] with the digit (0-9).
    """
    _, sklearn, _, _ = demo_imports()
    digits = sklearn.datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = sklearn.model_selection.train_test_split(
        x, y, test_size=0.3, random_state=seed, stratify=y
    )
    old_train = np.isin(y_train, OLD_CLASSES)
    old_test = np.isin(y_test, OLD_CLASSES)
    return {
        "old_train": (x_train[old_train], y_train[old_train]),
        "new_train": (x_train[~old_train], y_train[~old_train]),
        "old_test": (x_test[old_test], y_test[old_test]),
        "new_test": (x_test[~old_test], y_test[~old_test]),
    }


def make_model(hidden: int = 128) -> Any:
    """A flax.linen MLP: 64 → hidden → hidden → 10 logits."""
    nn, _, _, _ = demo_imports()
    module: Any = nn.Module  # imported at run time: the demo extra is optional

    class MLP(module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            x = nn.relu(nn.Dense(hidden)(x))
            x = nn.relu(nn.Dense(hidden)(x))
            return nn.Dense(NUM_CLASSES)(x)

    return MLP()


def make_loss_fn(
    model: Any,
) -> Callable[[Params, Batch], tuple[jax.Array, dict[str, jax.Array]]]:
    """``loss_fn(params, batch) -> (cross-entropy, outputs)``, the regularize form."""

    def loss_fn(params: Params, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits = model.apply(params, batch["x"])
        logprobs = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logprobs, batch["y"][:, None], axis=-1)
        return jnp.mean(nll), {"logits": logits, "logprobs": logprobs}

    return loss_fn


def make_penalties(base_params: Params) -> list[jp.Penalty]:
    """The two penalties of the demo, with their "on" weights.

    ``"base_logprobs"`` is not an output of the model: ``jp.regularize`` looks it
    up in the batch, where the train loop puts the frozen base model's
    log-probabilities (pre-computed once). The same penalty can compute them on
    demand instead, with a callable input::

        base_logprobs = lambda params, batch, outputs: jax.nn.log_softmax(
            model.apply(base_params, batch["x"]))
        jp.Penalty(jp.kl_divergence, inputs=(base_logprobs, "logprobs"), ...)
    """
    return [
        # KL(P_base ‖ P_model), a token-level mean over the batch.
        jp.Penalty(
            jp.kl_divergence,
            inputs=("base_logprobs", "logprobs"),
            weight=SETTINGS["+ KL to base"]["kl_to_base"],
            name="kl_to_base",
        ),
        # L2-SP: ‖θ − θ_base‖², the squared distance to the pre-trained weights.
        jp.Penalty(
            jp.l2,
            inputs=("params",),
            kwargs={"center": base_params},
            weight=SETTINGS["+ L2-SP"]["l2_sp"],
            name="l2_sp",
        ),
    ]


def loss_fn_with_aux(
    loss_fn: Callable[[Params, Batch], tuple[jax.Array, Outputs]],
) -> Callable[[Params, Batch], tuple[jax.Array, dict[str, Any]]]:
    """Adapts ``loss_fn`` to the ``(total, aux)`` form of a regularized objective."""

    def objective(params: Params, batch: Batch) -> tuple[jax.Array, dict[str, Any]]:
        loss, outputs = loss_fn(params, batch)
        return loss, {"loss": loss, "outputs": outputs}

    return objective


def make_train_step(
    objective: Callable[..., tuple[jax.Array, dict[str, Any]]], optimizer: Any
) -> Callable[..., tuple[Params, Any, dict[str, Any]]]:
    """A jitted step for ``objective(params, batch, **kw) -> (total, aux)``.

    ``kw`` (e.g. ``weights=``) is traced, so changing it does not recompile.
    Returns the new params and optimizer state, the total loss and the metrics
    part of ``aux`` (no outputs, so nothing large leaves the device).
    """

    @jax.jit
    def train_step(
        params: Params, opt_state: Any, batch: Batch, kw: dict[str, Any]
    ) -> tuple[Params, Any, dict[str, Any]]:
        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (total, aux), grads = grad_fn(params, batch, **kw)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        metrics = {"total": total, "loss": aux["loss"]}
        metrics["penalties"] = aux.get("penalties", {})
        return optax.apply_updates(params, updates), opt_state, metrics

    return train_step


def make_evaluate(
    model: Any, base_params: Params, data: dict[str, tuple[np.ndarray, np.ndarray]]
) -> Callable[[Params], dict[str, jax.Array]]:
    """``evaluate(params) -> {"old_acc", "new_acc", "kl_to_base"}`` (jitted).

    Accuracies are 10-way argmax accuracies on the held-out old and new digits;
    ``kl_to_base`` is KL(P_base ‖ P_model) averaged over the held-out old digits.
    """
    x_old, y_old = (jnp.asarray(a) for a in data["old_test"])
    x_new, y_new = (jnp.asarray(a) for a in data["new_test"])
    base_logprobs_old = jax.nn.log_softmax(model.apply(base_params, x_old))

    @jax.jit
    def evaluate(params: Params) -> dict[str, jax.Array]:
        logits_old = model.apply(params, x_old)
        logits_new = model.apply(params, x_new)
        return {
            "old_acc": jnp.mean(jnp.argmax(logits_old, axis=-1) == y_old),
            "new_acc": jnp.mean(jnp.argmax(logits_new, axis=-1) == y_new),
            "kl_to_base": jp.kl_divergence(
                base_logprobs_old, jax.nn.log_softmax(logits_old)
            ),
        }

    return evaluate
