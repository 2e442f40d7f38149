# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Catastrophic forgetting, and two penalties against it
#
# The experiment of `python -m jaxpenalties.demo`, step by step and with
# curves. A small MLP is pre-trained on the handwritten digits 0-4 (the
# *old task*) and then fine-tuned on 5-9 only (the *new task*). Plain
# fine-tuning forgets the old digits completely. Two penalties, added with
# `jp.regularize`, keep them:
#
# * **KL to base**: w · KL(P_base ‖ P_model) on the new-task inputs, the
#   frozen pre-trained model's predictions as soft targets ("Learning
#   without Forgetting", Li and Hoiem 2016).
# * **L2-SP**: w · ‖θ − θ_base‖², a pull towards the pre-trained weights
#   (Li et al. 2018), i.e. `jp.l2(params, center=base_params)`.
#
# The building blocks live in `jaxpenalties.demo`.

# %%
import functools

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxpenalties as jp
from jaxpenalties import demo

# %% [markdown]
# ## Data
#
# scikit-learn's 8×8 digits (shipped with scikit-learn, no download), split
# 70/30 into train and test, then into the old and the new task.

# %%
data = demo.load_data(seed=0)
for split, (x, y) in data.items():
    print(f"{split:<10} {x.shape}  digits {sorted(set(y.tolist()))}")

fig, axes = plt.subplots(2, 10, figsize=(10, 2.4))
for row, split in enumerate(("old_train", "new_train")):
    x, y = data[split]
    for ax, i in zip(axes[row], range(10), strict=True):
        ax.imshow(x[i].reshape(8, 8), cmap="gray_r")
        ax.set_title(int(y[i]), fontsize=9)
        ax.axis("off")
fig.tight_layout()

# %% [markdown]
# ## Fine-tuning under four settings
#
# `demo.run` pre-trains the MLP on the old task (Adam, 300 steps), then
# fine-tunes from those base weights four times with **one** compiled train
# step: a setting is a `weights={"kl_to_base": ..., "l2_sp": ...}`
# argument of the regularised loss (0 switches a penalty off), and
# changing weights never recompiles. Every 10 steps it evaluates, on
# held-out digits, the 10-way accuracy on the old and the new task and
# KL(P_base ‖ P_model) on the old digits.

# %%
outcome = demo.run(steps=300, eval_every=10, progress=False)
print(demo.format_table(outcome))

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 4))
panels = {
    "old_acc": "old-task accuracy (digits 0-4)",
    "new_acc": "new-task accuracy (digits 5-9)",
    "kl_to_base": "KL(P_base ‖ P_model) on old digits",
}
for ax, (key, title) in zip(axes, panels.items(), strict=True):
    for label, result in outcome["results"].items():
        ax.plot(result["history"]["step"], result["history"][key], label=label)
    ax.set_title(title)
    ax.set_xlabel("fine-tuning step")
    ax.grid(alpha=0.3)
axes[2].set_yscale("symlog", linthresh=0.01)
axes[0].legend()
fig.tight_layout()

# %% [markdown]
# Plain fine-tuning drives the old-task accuracy to 0 within about a
# hundred steps: nothing in the loss asks the model to keep predicting the
# old classes, and the cheapest way to fit 5-9 is to stop predicting 0-4
# at all. The KL penalty keeps the model's *predictions* close to the base
# model's; L2-SP keeps the *weights* close, which helps less here: small
# weight changes can still move the output layer a lot.
#
# ## How the regularised loss is built
#
# `demo.make_loss_fn(model)` returns `loss_fn(params, batch) -> (loss,
# outputs)` with the outputs `"logits"` and `"logprobs"`, the form
# `jp.regularize` expects. A penalty names its inputs: a name is looked up
# in the outputs, then in the batch; `"params"` is the parameter pytree; a
# callable `f(params, batch, outputs)` computes an input on demand. So a
# KL penalty can get its reference from the batch (pre-computed, as the
# demo does) or compute it on demand:

# %%
model = demo.make_model()
loss_fn = demo.make_loss_fn(model)
base_params = outcome["base_params"]


def base_logprobs(params, batch, outputs):
    """The frozen base model's log-probs, computed on demand."""
    del params, outputs  # the base model has its own, fixed params
    return jax.nn.log_softmax(model.apply(base_params, batch["x"]))


# 1. The reference travels in the batch (pre-computed once).
kl_from_batch = jp.Penalty(
    jp.kl_divergence, inputs=("base_logprobs", "logprobs"), name="kl_to_base"
)
# 2. The reference is computed on demand by a callable.
kl_on_demand = jp.Penalty(
    jp.kl_divergence, inputs=(base_logprobs, "logprobs"), name="kl_to_base"
)
# L2-SP: the center as a keyword argument, or bound with functools.partial.
l2_sp = jp.Penalty(
    jp.l2, inputs=("params",), kwargs={"center": base_params}, name="l2_sp"
)
l2_to_base = functools.partial(jp.l2, center=base_params)
l2_sp_partial = jp.Penalty(l2_to_base, inputs=("params",), name="l2_sp")

# %% [markdown]
# Both forms give the same numbers. `aux["penalties"]` reports, per
# penalty, its value, weight and contribution (and with
# `track_grad_norms=True` the norm of its gradient), all as arrays computed
# in-graph. The check uses a model slightly perturbed away from the base,
# so that both penalties are non-zero:

# %%
x_new, y_new = data["new_train"]
batch = {"x": x_new[:64], "y": y_new[:64]}
batch["base_logprobs"] = base_logprobs(None, batch, None)
noise = jax.tree.map(
    lambda a: 0.05 * jax.random.normal(jax.random.key(1), a.shape), base_params
)
moved = jax.tree.map(jnp.add, base_params, noise)

f_batch = jax.jit(jp.regularize(loss_fn, [kl_from_batch, l2_sp]))
f_demand = jax.jit(
    jp.regularize(loss_fn, [kl_on_demand, l2_sp_partial], track_grad_norms=True)
)
total_a, aux_a = f_batch(moved, batch)
total_b, aux_b = f_demand(moved, batch)
np.testing.assert_allclose(total_a, total_b, rtol=1e-5)
for name, entry in aux_b["penalties"].items():
    print(name, {k: round(float(v), 4) for k, v in entry.items()})
print("cross-entropy", float(aux_b["loss"]), " total", float(total_b))

# %% [markdown]
# ## The trade-off
#
# Each weight buys old-task accuracy with new-task accuracy. A sweep over
# the weights, fine-tuning from the same base weights (again one compiled
# step for all of them):

# %%
weights = (0.03, 0.1, 0.3, 1.0)
sweep = {f"kl {w:g}": {"kl_to_base": w, "l2_sp": 0.0} for w in weights}
sweep |= {f"l2sp {w:g}": {"kl_to_base": 0.0, "l2_sp": w} for w in weights}
swept = demo.run(
    steps=200,
    eval_every=200,
    settings=sweep,
    base_params=base_params,
    progress=False,
)

fig, ax = plt.subplots(figsize=(5.5, 4.5))
for prefix, marker in (("kl", "o-"), ("l2sp", "s-")):
    rows = [r for k, r in swept["results"].items() if k.startswith(prefix)]
    ax.plot(
        [r["new_acc"] for r in rows],
        [r["old_acc"] for r in rows],
        marker,
        label=f"{prefix} (weights {weights})",
    )
ax.set_xlabel("new-task accuracy")
ax.set_ylabel("old-task accuracy")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
for label, r in swept["results"].items():
    print(f"{label:<10} old {r['old_acc']:.3f}  new {r['new_acc']:.3f}")

# %% [markdown]
# Where the new task is still learned well (new-task accuracy above about
# 0.9), the KL penalty keeps much more of the old task than L2-SP:
# constraining the function is more direct than constraining the
# parameters. At large weights both freeze the model and the new task
# suffers.
#
# ## Checks

# %%
results = outcome["results"]
plain, kl = results["fine-tune"], results["+ KL to base"]
assert outcome["base"]["old_acc"] > 0.95
assert plain["old_acc"] < 0.1 and plain["new_acc"] > 0.9
assert kl["old_acc"] > 0.8 and kl["new_acc"] > 0.85
assert kl["kl_to_base"] < 0.2 * plain["kl_to_base"]
assert results["+ both"]["old_acc"] > results["+ L2-SP"]["old_acc"]
assert swept["base"] == outcome["base"]  # the sweep reused the base model
print("all checks passed")
