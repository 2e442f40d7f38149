# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Distillation at a large vocabulary
#
# Two tools for KL penalties between language models whose vocabulary is
# large:
#
# 1. **Fused linear divergences.** A distillation loss needs the logits of
#    student and teacher, [positions, V] each; at V = 128k and 32k
#    positions that is 16 GiB per model in float32, before the backward
#    pass. `jp.fused_linear_kl_divergence(x, w, ref_x, ref_w)` takes the
#    hidden states and the heads' kernels instead and processes
#    `chunk_size` positions at a time, forward and backward, with the same
#    value and gradients.
# 2. **Sampled-token KL estimators.** When only the log-probabilities of the
#    sampled tokens are available (RL rollouts, inference services),
#    `jp.kl_estimate` estimates KL(π‖π_ref) with Schulman's k1/k2/k3. We
#    measure their bias and variance against the exact KL.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxpenalties as jp

# %% [markdown]
# ## 1. Fused vs materialised
#
# A student (hidden size 128) is distilled from a teacher (hidden size 192)
# over V = 16384 tokens at 1024 positions (say 4 sequences of 256 tokens).
# The loss is the forward distillation KL(P_teacher ‖ P_student). In the
# fused call the student comes first, so that is `direction="reverse"`;
# the teacher is frozen with `stop_gradient`, which also skips its gradient
# work.

# %%
N, H, H_REF, V = 1024, 128, 192, 16384
k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
ref_x = jax.random.normal(k1, (N, H_REF))  # teacher hidden states
ref_w = jax.random.normal(k2, (H_REF, V)) / jnp.sqrt(H_REF)  # teacher head
# The student's features are a noisy projection of the teacher's.
x = ref_x[:, :H] + 0.5 * jax.random.normal(k3, (N, H))
w = ref_w[:H] + 0.5 * jax.random.normal(k4, (H, V)) / jnp.sqrt(H)


def materialised(x, w, ref_x, ref_w):
    teacher = jax.nn.log_softmax(ref_x @ ref_w)  # [N, V]
    student = jax.nn.log_softmax(x @ w)  # [N, V]
    return jp.kl_divergence(teacher, student)  # KL(teacher ‖ student)


def fused(chunk_size):
    def loss(x, w, ref_x, ref_w):
        return jp.fused_linear_kl_divergence(
            x,
            w,
            jax.lax.stop_gradient(ref_x),
            jax.lax.stop_gradient(ref_w),
            direction="reverse",  # KL(teacher ‖ student)
            chunk_size=chunk_size,
        )

    return loss


def measure(loss, repeats=2):
    """Compiles value-and-grad, then returns temp memory, time, results."""
    # The teacher is an argument, not a closed-over constant: XLA would
    # otherwise pre-compute (constant-fold) its logits while compiling.
    args = (x, w, ref_x, ref_w)
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    compiled = step.lower(*args).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    result = jax.block_until_ready(compiled(*args))  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        seconds.append(time.perf_counter() - start)
    return temp, min(seconds), result


runs = {"materialised": measure(materialised)}
for chunk_size in (128, 512):
    runs[f"fused, chunk {chunk_size}"] = measure(fused(chunk_size))

logits_mib = N * V * 4 / 2**20
print(f"one [N, V] float32 logits array: {logits_mib:.0f} MiB")
print(f"{'method':<18} {'temp MiB':>9} {'ms / step':>10} {'KL':>9}")
for name, (temp, seconds, (value, _)) in runs.items():
    print(f"{name:<18} {temp / 2**20:>9.1f} {1e3 * seconds:>10.1f} {value:>9.5f}")

# %% [markdown]
# "temp" is XLA's scratch memory for one value-and-gradient step (from the
# compiled executable's `memory_analysis()`), i.e. what the step needs on
# top of its inputs and outputs. The materialised step holds several
# [N, V] arrays (teacher and student logits, their softmaxes, the
# gradient); the fused one holds a few [chunk, V] blocks plus one [H, V]
# accumulator for the student head's gradient, so its memory is set by
# `chunk_size`, not by the number of positions. On CPU it is also faster
# here, as the blocks stay in cache.
#
# Value and gradients agree:

# %%
value_m, (dx_m, dw_m) = runs["materialised"][2]
for _, _, (value, (dx, dw)) in runs.values():
    np.testing.assert_allclose(value, value_m, rtol=1e-5)
    np.testing.assert_allclose(dx, dx_m, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(dw, dw_m, rtol=1e-4, atol=1e-8)
temp_m = runs["materialised"][0]
temp_f = runs["fused, chunk 128"][0]
assert temp_f < temp_m / 4, (temp_f, temp_m)
print(f"fused (chunk 128) uses {temp_m / temp_f:.1f}x less scratch memory")

# %% [markdown]
# ## 2. KL from sampled tokens: k1, k2, k3
#
# With tokens xₜ sampled from π and r = π_ref(xₜ) / π(xₜ):
#
# * k1 = −log r: unbiased for KL(π‖π_ref), high variance, can be negative;
# * k2 = ½ (log r)²: low variance, biased (it is exact only to second
#   order in log r);
# * k3 = (r − 1) − log r: unbiased and always ≥ 0 (Schulman, Approximating
#   KL Divergence, 2020).
#
# For 16 positions over a vocabulary of 256 we draw 4096 tokens per
# position from π with `jax.random.categorical`, and compare each
# estimator's mean and standard deviation with the exact
# `jp.kl_divergence(log π, log π_ref)`, for references π_ref further and
# further from π.

# %%
POSITIONS, VOCAB, SAMPLES = 16, 256, 4096
logits = 2.0 * jax.random.normal(jax.random.key(1), (POSITIONS, VOCAB))
noise = jax.random.normal(jax.random.key(2), (POSITIONS, VOCAB))
ESTIMATORS = ("k1", "k2", "k3")


@jax.jit
def study(scale, key):
    logp = jax.nn.log_softmax(logits)  # π, the sampling policy
    logp_ref = jax.nn.log_softmax(logits + scale * noise)  # π_ref
    exact = jp.kl_divergence(logp, logp_ref, reduction="none")  # [P]
    tokens = jax.random.categorical(key, logp, shape=(SAMPLES, POSITIONS))
    positions = jnp.arange(POSITIONS)
    lp, lp_ref = logp[positions, tokens], logp_ref[positions, tokens]  # [S, P]
    estimates = {
        k: jp.kl_estimate(lp, lp_ref, estimator=k, reduction="none") for k in ESTIMATORS
    }
    return exact, estimates


scales = (0.1, 0.3, 1.0, 2.0, 3.0)
stats = {k: {"kl": [], "bias": [], "stderr": [], "std": []} for k in ESTIMATORS}
for scale in scales:
    exact, estimates = study(scale, jax.random.key(3))
    kl = float(exact.mean())
    for k, est in estimates.items():
        # Averaged over positions: the mean estimate's error, its Monte
        # Carlo standard error, and the std of a single-token estimate.
        error = est.mean(axis=0) - exact
        s = stats[k]
        s["kl"].append(kl)
        s["bias"].append(float(error.mean()))
        s["stderr"].append(float(est.std(axis=0).mean() / np.sqrt(SAMPLES)))
        s["std"].append(float(est.std(axis=0).mean()))

header = " ".join(f"{k + ' bias':>9} {k + ' std':>7}" for k in ESTIMATORS)
print(f"{'exact KL':>9} {header}")
for i in range(len(scales)):
    cols = " ".join(
        f"{stats[k]['bias'][i]:>+9.4f} {stats[k]['std'][i]:>7.3f}" for k in ESTIMATORS
    )
    print(f"{stats['k1']['kl'][i]:>9.4f} {cols}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for k in ESTIMATORS:
    kl = np.array(stats[k]["kl"])
    axes[0].plot(kl, np.array(stats[k]["bias"]) / kl, "o-", label=k)
    axes[1].plot(kl, np.array(stats[k]["std"]) / kl, "o-", label=k)
axes[0].set_ylabel("relative bias  (mean estimate − KL) / KL")
axes[1].set_ylabel("relative std of a one-token estimate")
for ax in axes:
    ax.set_xscale("log")
    ax.set_xlabel("exact KL(π‖π_ref), nats")
    ax.grid(alpha=0.3)
    ax.legend()
axes[1].set_yscale("log")
fig.tight_layout()

# %% [markdown]
# * k1 and k3 are unbiased at every distance (their errors are within the
#   Monte Carlo noise); k2's bias grows with the KL, to about twice the KL
#   at 4 nats.
# * Close to the reference (small KL, the regime of an RLHF penalty), k1 is
#   an order of magnitude noisier than k2 and k3; k3 is as quiet as k2
#   without its bias. Far from the reference k3's variance grows (r can be
#   large; `max_log_ratio=` clamps log r if the `exp` overflows) and k1
#   becomes the quieter one.
# * With the full distributions at hand, use the exact `jp.kl_divergence`
#   (or the fused version): no sampling noise at all.

# %%
for k in ("k1", "k3"):
    for bias, stderr in zip(stats[k]["bias"], stats[k]["stderr"], strict=True):
        assert abs(bias) < 5 * stderr, (k, bias, stderr)
kl_far = stats["k2"]["kl"][-1]
assert stats["k2"]["bias"][-1] > 0.5 * kl_far  # k2 is biased far away
assert stats["k3"]["std"][0] < 0.2 * stats["k1"]["std"][0]  # and k3 quiet near
print("all checks passed")

# %% [markdown]
# ## A distillation step: hard labels + a soft loss from a top-k store
#
# Real distillation mixes the cross-entropy on the data's labels with the
# soft loss, and teachers are often stored offline as their **top-k**
# log-probs per position. Below, a frozen teacher head is run once to build
# a top-16 store; a student head is then trained with
#
# * `fused_linear_js_divergence(..., labels=...)`: soft JS to the live
#   teacher + hard CE in **one pass** over each student logit chunk, both
#   parts reported as metrics; and
# * `fused_linear_sparse_js_divergence` against the top-16 store, plus
#   the CE from `fused_linear_token_logprobs`.
#
# Neither step materialises the [positions, V] logits. The positions
# outnumber the vocabulary 16 to 1 and the student head has rank 8, so it
# cannot memorise the sampled labels: the soft loss is what brings it to
# the teacher. The store keeps about half of the teacher's mass in its
# 16 entries; `tail="bucket"` keeps the rest as one bucket.

# %%
import optax

N, HID, VOCAB, K = 8192, 8, 512, 16
kt, ks, kx, kn = jax.random.split(jax.random.key(7), 4)
teacher_w = jax.random.normal(kt, (HID, VOCAB)) / np.sqrt(HID) * 2
hidden = jax.random.normal(kx, (N, HID))
teacher_lp = jax.nn.log_softmax(hidden @ teacher_w)
# The data's labels: samples from the teacher (so both losses agree).
labels = jax.random.categorical(kn, teacher_lp)
# The offline top-k store: indices and log-probs under the full teacher.
store_lp, store_idx = jax.lax.top_k(teacher_lp, K)
print("mass kept by the top-16 store:", float(jnp.exp(store_lp).sum(-1).mean()))


def live_loss(w):
    return jp.fused_linear_js_divergence(
        hidden,
        w,
        hidden,
        teacher_w,
        labels=labels,
        soft_weight=0.5,
        hard_weight=0.5,
        chunk_size=128,
    )


def store_loss(w):
    soft = jp.fused_linear_sparse_js_divergence(
        hidden, w, store_idx, store_lp, tail="bucket", chunk_size=128
    )
    ce = -jp.fused_linear_token_logprobs(hidden, w, labels, chunk_size=128).mean()
    return 0.5 * soft + 0.5 * ce, {"divergence": soft, "cross_entropy": ce}


def train(loss_fn, steps=200):
    w = 0.01 * jax.random.normal(ks, (HID, VOCAB))
    opt = optax.adam(5e-2)
    state = opt.init(w)

    @jax.jit
    def step(w, state):
        (loss, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(w)
        updates, state = opt.update(g, state)
        return optax.apply_updates(w, updates), state, loss, metrics

    history = []
    for _ in range(steps):
        w, state, loss, metrics = step(w, state)
        history.append((float(loss), {k: float(v) for k, v in metrics.items()}))
    return w, history


losses = {"live teacher": live_loss, "top-16 store": store_loss}
results = {name: train(f) for name, f in losses.items()}
for name, (_, history) in results.items():
    (l0, m0), (l1, m1) = history[0], history[-1]
    ce0, ce1 = m0["cross_entropy"], m1["cross_entropy"]
    js0, js1 = m0["divergence"], m1["divergence"]
    print(
        f"{name:>13}: loss {l0:.3f} -> {l1:.3f}, "
        f"CE {ce0:.3f} -> {ce1:.3f}, JS {js0:.4f} -> {js1:.4f}"
    )

# %%
# Both students end close to the teacher: exact JS to the full teacher.
for name, (w, history) in results.items():
    js = float(jp.js_divergence(jax.nn.log_softmax(hidden @ w), teacher_lp))
    print(f"{name:>13}: JS(student, full teacher) = {js:.4f}")
    start = jax.nn.log_softmax(hidden @ (0.01 * teacher_w))
    assert js < 0.5 * float(jp.js_divergence(start, teacher_lp))
    assert history[-1][0] < 0.7 * history[0][0]


# %% [markdown]
# **Memory.** XLA's compiled temporary memory of one training step's
# `value_and_grad` (H = 64, V = 32,768, float32), fused against the same
# step on materialised logits, at two sequence lengths:


# %%
def temp_mib(loss_fn, n, h=64, v=32768):
    x = jax.ShapeDtypeStruct((n, h), jnp.float32)
    w = jax.ShapeDtypeStruct((h, v), jnp.float32)
    y = jax.ShapeDtypeStruct((n,), jnp.int32)
    step = jax.jit(jax.value_and_grad(loss_fn, argnums=1, has_aux=True))
    return step.lower(x, w, y).compile().memory_analysis().temp_size_in_bytes / 2**20


def fused_step(x, w, y):
    rx, rw = jax.lax.stop_gradient((x, w * 2))
    return jp.fused_linear_js_divergence(x, w, rx, rw, labels=y, chunk_size=256)


def materialised_step(x, w, y):
    a = jax.nn.log_softmax(x @ w)
    b = jax.lax.stop_gradient(jax.nn.log_softmax(x @ (w * 2)))
    ce = -jnp.take_along_axis(a, y[:, None], -1).mean()
    js = jp.js_divergence(a, b)
    return js + ce, {"divergence": js, "cross_entropy": ce}


for n in (2048, 8192):
    f, m = temp_mib(fused_step, n), temp_mib(materialised_step, n)
    ratio = m / f
    print(
        f"{n:>5} positions: fused {f:7.1f} MiB, materialised {m:8.1f} MiB, {ratio:.0f}x"
    )
    assert f < m / 4
