# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Beyond KL: ULD across vocabularies, α, skew KL, TV and MMD
#
# Three experiments with the divergences that go beyond the KL family, on
# data that ships with scikit-learn (the 8×8 handwritten digits, no
# download):
#
# 1. **Distillation across two vocabularies.** The teacher's 16 outputs and
#    the student's 10 are in different orders, so their logits cannot be
#    compared entry by entry. `jp.uld_distance` compares the *sorted*
#    probabilities and needs no alignment. We compare it with a KL on the
#    part the two vocabularies share (the 10 digits, mapped explicitly), and
#    with a student that sees only a few hard labels.
# 2. **The f-divergences on a bimodal target.** One Gaussian fitted to two
#    modes by forward and reverse KL, Amari's α-divergence from α = 0 to 1,
#    DistiLLM's skew KLs and the total variation.
# 3. **MMD as a representation penalty.** `jp.mmd` with the median
#    bandwidth, as a `jp.Penalty` in `jp.regularize`: it pulls a student's
#    hidden features towards a bank of the teacher's features, computed on
#    *other* images (the sets are compared, not paired rows).
#
# The maths of each divergence is on the {doc}`../beyond_kl` page.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jaxpenalties as jp

start_time = time.perf_counter()

# %% [markdown]
# ## 1. Distillation across two vocabularies
#
# The digits are split 70/30 into train and test. Each model has its own
# output "vocabulary": the teacher's has 16 tokens, the 10 digits at
# shuffled positions and 6 tokens that no label ever uses; the student's
# has 10 tokens, the digits in another order. Think of two tokenizers that
# share some tokens but number them differently.

# %%
digits = load_digits()
x_all = (digits.data / 16.0).astype(np.float32)
y_all = digits.target.astype(np.int32)
x_train, x_test, y_train, y_test = train_test_split(
    x_all, y_all, test_size=0.3, random_state=0, stratify=y_all
)
rng = np.random.default_rng(0)
TEACHER_VOCAB, STUDENT_VOCAB = 16, 10
teacher_token = rng.permutation(TEACHER_VOCAB)[:10]  # digit d -> teacher token
student_token = rng.permutation(STUDENT_VOCAB)  # digit d -> student token
unused = sorted(set(range(TEACHER_VOCAB)) - set(teacher_token.tolist()))
print(f"train {x_train.shape}, test {x_test.shape}")
print("digit         ", np.arange(10))
print("teacher token ", teacher_token, " never used:", unused)
print("student token ", student_token)

# %% [markdown]
# The models are plain-JAX MLPs with tanh hidden layers. One function trains
# a model with Adam in one jitted `lax.scan` and records the test accuracy
# at every step. It is `vmap`ped over the initialisation seeds, and the
# data and the hyperparameters (temperature, weight) are arguments: every
# later run with new values reuses the compiled program.


# %%
def init_mlp(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def hidden(params, x):
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x


def mlp(params, x):
    return hidden(params, x) @ params[-1]["w"] + params[-1]["b"]


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_trainer(loss, sizes, steps=200, learning_rate=1e-2):
    optimizer = optax.adam(learning_rate)

    def run(key, data):
        params = init_mlp(key, sizes)

        def step(carry, _):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params, data)
            updates, state = optimizer.update(grads, state)
            params = optax.apply_updates(params, updates)
            predicted = jnp.argmax(mlp(params, data["x_test"]), -1)
            accuracy = jnp.mean(predicted == data["y_test"])
            return (params, state), (value, accuracy)

        init = (params, optimizer.init(params))
        (params, _), (values, accuracy) = jax.lax.scan(step, init, length=steps)
        return params, values, accuracy

    return jax.jit(jax.vmap(run, in_axes=(0, None)))


# The teacher: all the training labels, as teacher tokens.
teacher_data = {
    "x": x_train,
    "y": teacher_token[y_train],
    "x_test": x_test,
    "y_test": teacher_token[y_test],
}
train_teacher = make_trainer(
    lambda p, d: cross_entropy(mlp(p, d["x"]), d["y"]), [64, 32, TEACHER_VOCAB]
)
teacher, _, teacher_acc = train_teacher(
    jax.random.split(jax.random.key(0), 1), teacher_data
)
teacher = jax.tree.map(lambda a: a[0], teacher)
teacher_logits = mlp(teacher, x_train)  # [1257, 16]: the transfer set
mass_unused = jnp.exp(jax.nn.log_softmax(teacher_logits)[:, unused]).sum(-1).mean()
print(f"teacher test accuracy {float(teacher_acc[0, -1]):.3f}")
print(f"teacher mass on its 6 unused tokens: {float(mass_unused):.1e}")

# %% [markdown]
# The students see the hard labels of only 50 training images (5 per
# digit) and the teacher's outputs on all 1,257 training images. Four
# losses, each `cross-entropy(50 labels) + weight · soft term`:
#
# * **hard labels only**: no soft term;
# * **+ ULD**: `uld_distance(student_logits, teacher_logits,
#   from_logits=True, temperature=T)` between the [N, 10] student and the
#   [N, 16] teacher, with no mapping: each side's probabilities are sorted
#   and compared rank by rank (the shorter vector padded with zeros);
# * **+ KL on the shared part**: the teacher's logits of the 10 digits,
#   gathered *in the student's order*, renormalised over them by
#   `from_logits=True`, and the distillation KL(teacher ‖ student);
# * **+ ULD, teacher shuffled** (a control): the teacher's rows permuted
#   across images, so that the teacher's outputs no longer belong to the
#   image the student sees.
#
# Both soft terms use T = 4 and weight 1; three seeds per loss, 200 Adam
# steps on the full batch. One loss function holds both soft terms, each
# behind `lax.cond` on its weight (skipped, not just multiplied by 0, when
# the weight is 0), so a single compiled program trains every student.

# %%
labelled = np.concatenate([np.flatnonzero(y_train == d)[:5] for d in range(10)])
# The KL needs the map: student token s is digit argsort(student_token)[s],
# which is teacher token teacher_token[that digit].
shared_columns = teacher_token[np.argsort(student_token)]
student_data = {
    "x_labelled": x_train[labelled],
    "y_labelled": student_token[y_train[labelled]],
    "x": x_train,
    "teacher_logits": teacher_logits,
    "x_test": x_test,
    "y_test": student_token[y_test],
    "temperature": jnp.float32(4.0),
}
one, zero = jnp.float32(1.0), jnp.float32(0.0)


def soft_term(weight, divergence):
    """weight · divergence(), not computed at all when the weight is 0."""
    return jax.lax.cond(weight > 0, lambda: weight * divergence(), lambda: zero)


def student_loss(params, d):
    hard = cross_entropy(mlp(params, d["x_labelled"]), d["y_labelled"])
    logits = mlp(params, d["x"])  # [N, 10], the student's vocabulary
    uld = soft_term(
        d["uld_weight"],
        lambda: jp.uld_distance(
            logits,
            d["teacher_logits"],  # [N, 16]: another vocabulary, no mapping
            from_logits=True,
            temperature=d["temperature"],
        ),
    )
    kl = soft_term(
        d["kl_weight"],
        lambda: jp.kl_divergence(
            d["teacher_logits"][:, shared_columns],  # [N, 10], aligned
            logits,  # P = teacher: KL(teacher ‖ student)
            from_logits=True,
            temperature=d["temperature"],
        ),
    )
    return hard + uld + kl


shuffled = np.random.default_rng(1).permutation(len(x_train))
settings = {
    "hard labels only": {"uld_weight": zero, "kl_weight": zero},
    "+ ULD": {"uld_weight": one, "kl_weight": zero},
    "+ KL on the shared part": {"uld_weight": zero, "kl_weight": one},
    "+ ULD, teacher shuffled": {
        "uld_weight": one,
        "kl_weight": zero,
        "teacher_logits": teacher_logits[shuffled],
    },
}
train_student = make_trainer(student_loss, [64, 32, STUDENT_VOCAB])
seeds = jax.random.split(jax.random.key(1), 3)
runs = {
    name: train_student(seeds, student_data | setting)
    for name, setting in settings.items()
}

final_acc = {name: np.asarray(acc[:, -1]) for name, (_, _, acc) in runs.items()}
print(f"{'student (50 hard labels)':<26} {'test accuracy':>18}")
for name, acc in final_acc.items():
    print(f"{name:<26} {acc.mean():>10.3f} ± {acc.std():.3f}")
print(f"{'teacher (1,257 labels)':<26} {float(teacher_acc[0, -1]):>10.3f}")

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for name, (_, _, acc) in runs.items():
    ax.plot(np.asarray(acc).mean(0), label=name)
ax.axhline(float(teacher_acc[0, -1]), color="0.5", ls=":", label="teacher")
ax.set_xlabel("training step")
ax.set_ylabel("test accuracy (mean of 3 seeds)")
ax.set_ylim(0, 1)
ax.grid(alpha=0.3)
ax.legend(loc="lower right")
ax.set_title("Students with 50 hard labels and a 16-token teacher")
fig.tight_layout()

# %% [markdown]
# **The temperature.** ULD sees only how confident the teacher is, not
# which digit it means. With T = 1 this teacher is nearly one-hot on every
# image, and ULD just asks the student to be confident too. A higher T
# reveals how the teacher's confidence varies from image to image. T is an
# argument of the compiled program, so this comparison compiles nothing:

# %%
sweep = {(name, 4.0): float(final_acc[name].mean()) for name in settings}
for name in ("+ ULD", "+ KL on the shared part"):
    data = student_data | settings[name] | {"temperature": jnp.float32(1.0)}
    _, _, acc = train_student(seeds, data)
    sweep[name, 1.0] = float(acc[:, -1].mean())
print(f"{'T':>3}  {'+ ULD':>6}  {'+ KL shared':>11}")
for temperature in (1.0, 4.0):
    uld_acc = sweep["+ ULD", temperature]
    kl_acc = sweep["+ KL on the shared part", temperature]
    print(f"{temperature:>3g}  {uld_acc:>6.3f}  {kl_acc:>11.3f}")

# %% [markdown]
# * The KL on the shared part is far ahead: with the map between the
#   vocabularies, the teacher's soft labels say *which* digit each of the
#   1,257 images is, and the student nearly reaches the teacher.
# * ULD helps too, by less: it transfers the teacher's confidence profile
#   per image, and the 50 hard labels supply the identities. The shuffled
#   control keeps about half of the gain: that half is a generic push
#   towards the teacher's typical confidence, the other half comes from the
#   teacher's profile on *that* image. At T = 1 the teacher is nearly
#   one-hot and ULD gains little.
# * So: when the vocabularies share tokens, map them and use a KL (or JS)
#   on the shared part. ULD is for when no map exists, and it needs hard
#   labels next to it.
#
# **From the hidden states.** `fused_linear_divergence(...,
# divergence="uld")` takes the two heads as hidden states and kernels, of
# different vocabulary sizes, without forming the logits: the same value
# and gradients as `uld_distance` on the logits. (A head with a bias gets
# it as one more kernel row, against a constant-1 unit of the hidden
# state.) And ULD cannot tell a vocabulary from its permutation:

# %%
student = jax.tree.map(lambda a: a[0], runs["+ ULD"][0])


def with_bias_unit(params, x):
    h = hidden(params, x)
    h = jnp.concatenate([h, jnp.ones((h.shape[0], 1))], axis=1)
    kernel = jnp.concatenate([params[-1]["w"], params[-1]["b"][None]], axis=0)
    return h, kernel


heads = (*with_bias_unit(student, x_train), *with_bias_unit(teacher, x_train))
# h_s [N, 33] and w_s [33, 10]: the student; h_t [N, 33] and w_t [33, 16].


def fused_uld(h_s, w_s, h_t, w_t):
    return jp.fused_linear_divergence(
        h_s, w_s, h_t, w_t, divergence="uld", temperature=4.0, chunk_size=256
    )


def dense_uld(h_s, w_s, h_t, w_t):
    return jp.uld_distance(h_s @ w_s, h_t @ w_t, from_logits=True, temperature=4.0)


@jax.jit
def both(heads):
    fused = jax.value_and_grad(fused_uld, argnums=(0, 1))(*heads)
    return fused, jax.value_and_grad(dense_uld, argnums=(0, 1))(*heads)


(fused_value, fused_grads), (dense_value, dense_grads) = both(heads)
reordered = jp.uld_distance(
    mlp(student, x_train),
    teacher_logits[:, np.random.default_rng(2).permutation(TEACHER_VOCAB)],
    from_logits=True,
    temperature=4.0,
)
print(f"ULD fused {float(fused_value):.6f}, dense {float(dense_value):.6f}")
print(f"ULD with the teacher's vocabulary permuted: {float(reordered):.6f}")
np.testing.assert_allclose(fused_value, dense_value, rtol=1e-5)
for a, b in zip(fused_grads, dense_grads, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
np.testing.assert_allclose(reordered, dense_value, rtol=1e-6)

# %% [markdown]
# ## 2. The f-divergences on a bimodal target
#
# As in {doc}`01_kl_directions`, but over a 100-bin grid and with the new
# divergences: a bimodal target P (two narrow Gaussians at ±2.5) and a
# unimodal student Q with two parameters, its mean and log-scale, fitted by
# Adam from a start between the modes (mean 1, std 1).
#
# Argument order matters. `kl_divergence(p, q)` is KL(P‖Q), and with the
# *student first*, `alpha_divergence(student, target, alpha=α)` is Amari's
# D_α(Q‖P): α = 0 is KL(P‖Q), the forward, mode-covering KL, and α = 1 is
# KL(Q‖P), the reverse, mode-seeking one. DistiLLM's skew KL takes the
# *teacher first*: `skew_kl_divergence(target, student, skew=λ)` is
# KL(P ‖ λP + (1 − λ)Q), and `direction="reverse"` gives the skew reverse
# KL(Q ‖ λQ + (1 − λ)P). TV is symmetric.

# %%
grid = jnp.linspace(-6.0, 6.0, 100)


def gaussian_on_grid(mean, log_std):
    z = (grid - mean) / jnp.exp(log_std)
    return jax.nn.log_softmax(-0.5 * z**2)


narrow = jnp.log(0.6)
target = jnp.logaddexp(
    gaussian_on_grid(-2.5, narrow), gaussian_on_grid(2.5, narrow)
) - jnp.log(2.0)


families = {  # objective(q, param): q the student, param its α or λ
    "forward KL": lambda q, a: jp.kl_divergence(target, q),
    "reverse KL": lambda q, a: jp.kl_divergence(q, target),
    "alpha": lambda q, a: jp.alpha_divergence(q, target, alpha=a),
    "skew KL": lambda q, a: jp.skew_kl_divergence(target, q, skew=a),
    "skew reverse KL": lambda q, a: jp.skew_kl_divergence(
        target, q, skew=a, direction="reverse"
    ),
    "TV": lambda q, a: jp.total_variation(q, target),
}
ALPHAS = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)
settings_b = {  # name: (family, α or λ)
    "forward KL(P‖Q)": ("forward KL", 0.0),
    "reverse KL(Q‖P)": ("reverse KL", 0.0),
    **{f"α = {a:g}": ("alpha", a) for a in ALPHAS},
    "skew KL λ = 0.1": ("skew KL", 0.1),
    "skew reverse KL λ = 0.1": ("skew reverse KL", 0.1),
    "TV": ("TV", 0.0),
}
fit_optimizer = optax.adam(0.05)


@jax.jit
def fit(theta, family, param):
    """500 Adam steps on (mean, log_std). The objective is picked by
    `lax.switch` and α or λ is traced: one compile for every fit."""

    def loss(theta):
        q = gaussian_on_grid(theta[0], theta[1])
        return jax.lax.switch(family, list(families.values()), q, param)

    def step(carry, _):
        theta, state = carry
        value, grads = jax.value_and_grad(loss)(theta)
        updates, state = fit_optimizer.update(grads, state)
        return (optax.apply_updates(theta, updates), state), value

    init = (theta, fit_optimizer.init(theta))
    (theta, _), values = jax.lax.scan(step, init, length=500)
    return theta, values


theta0 = jnp.array([1.0, 0.0])  # mean 1, std 1
index = {family: i for i, family in enumerate(families)}
fits = {
    name: fit(theta0, index[family], jnp.float32(param))
    for name, (family, param) in settings_b.items()
}

print(f"{'objective':<24} {'mean':>6} {'std':>5} {'final':>7}")
for name, (theta, values) in fits.items():
    std = float(jnp.exp(theta[1]))
    print(f"{name:<24} {float(theta[0]):>+6.2f} {std:>5.2f} {float(values[-1]):>7.4f}")

# %%
shown = [
    "forward KL(P‖Q)",
    "reverse KL(Q‖P)",
    "α = 0.5",
    "α = 0.9",
    "skew KL λ = 0.1",
    "skew reverse KL λ = 0.1",
    "TV",
]
fig, axes = plt.subplots(2, 4, figsize=(15, 6))
for ax, name in zip(axes.flat, shown, strict=False):
    theta, _ = fits[name]
    ax.fill_between(grid, jnp.exp(target), color="0.8", label="target P")
    ax.plot(grid, jnp.exp(gaussian_on_grid(theta[0], theta[1])), label="fitted Q")
    ax.set_title(name)
axes[0, 0].legend(loc="upper left", fontsize=8)
stds = [float(jnp.exp(fits[f"α = {a:g}"][0][1])) for a in ALPHAS]
axes[1, 3].plot(ALPHAS, stds, "o-")
axes[1, 3].set_xlabel("α in alpha_divergence(Q, P, alpha=α)")
axes[1, 3].set_ylabel("fitted std")
axes[1, 3].set_title("α from covering (0) to seeking (1)")
axes[1, 3].grid(alpha=0.3)
fig.tight_layout()

# %% [markdown]
# Gradient descent finds a *local* minimum. Which of the two candidate
# answers, "sit on one mode" or "cover both" (the forward-KL fit), does each
# objective prefer globally?

# %%
one_mode = gaussian_on_grid(2.5, narrow)
cover_theta, _ = fits["forward KL(P‖Q)"]
cover_both = gaussian_on_grid(cover_theta[0], cover_theta[1])
prefers = {}
print(f"{'objective':<24} {'one mode':>9} {'cover both':>11}  prefers")
for name, (family, param) in settings_b.items():
    objective = families[family]
    a = float(objective(one_mode, jnp.float32(param)))
    b = float(objective(cover_both, jnp.float32(param)))
    prefers[name] = "one mode" if a < b else "cover both"
    print(f"{name:<24} {a:>9.4f} {b:>11.4f}  {prefers[name]}")

# %% [markdown]
# * Forward KL (= α = 0) covers both modes; reverse KL (= α = 1) sits on
#   one, at exactly log 2: half of P is missed, and that is all it costs.
# * α in between interpolates, but not evenly. Sitting on one mode costs
#   (1 − 2^(α−1)) / (α(1 − α)) (the sum Σ q^α p^(1−α) is 2^(α−1) there),
#   which is more than covering up to α = ½ and less from α = ¾. At α = ¾
#   gradient descent still ends in the wide local minimum; from α = 0.9 it
#   goes to a mode.
# * The skew KL λ = 0.1 is a forward KL with the student mixed with 10% of
#   the teacher, and covers. The skew reverse KL and TV *prefer* one mode
#   (TV = ½ there), yet from this start gradient descent ends in the wide
#   local minimum: both are bounded, and flat far from their minimum, like
#   JS in {doc}`01_kl_directions`.
#
# ## 3. MMD as a representation penalty
#
# A new student encoder (64 → 32, tanh) is put under the teacher's frozen
# head (32 → 16) and trained on one labelled image per digit, through the
# head. Its features should also *look like* the teacher's: the penalty is
# `mmd(student features, teacher features, bandwidth="median")` between a
# batch of 64 unlabelled images and a batch of 64 entries of a *bank* of
# teacher features computed on the other half of the training images. No
# image is in both sets, so a paired loss (MSE per row) is impossible; MMD
# compares the two sets as distributions.
#
# One compiled step serves both runs: the penalty's weight is given by
# `weights={"mmd": w}`, and at weight 0 its value is still computed and
# reported.

# %%
half = len(x_train) // 2
bank = hidden(teacher, x_train[:half])  # [628, 32], teacher features
one_per_digit = np.array([np.flatnonzero(y_train[half:] == d)[0] for d in range(10)])
mmd_data = {
    "x_labelled": x_train[half:][one_per_digit],
    "y_labelled": teacher_token[y_train[half:][one_per_digit]],
    "x_unlabelled": x_train[half:],
    "bank": bank,
    "head": teacher[-1],
    "x_test": x_test,
    "y_test": teacher_token[y_test],
    "test_bank": hidden(teacher, x_test),
}


def encode(encoder, x):
    return jnp.tanh(x @ encoder["w"] + encoder["b"])


def loss_fn(encoder, batch):
    logits = encode(encoder, batch["x_labelled"]) @ batch["head"]["w"]
    ce = cross_entropy(logits + batch["head"]["b"], batch["y_labelled"])
    return ce, {"features": encode(encoder, batch["x_unlabelled"])}


mmd_penalty = jp.Penalty(
    jp.mmd,
    inputs=("features", "teacher_features"),
    kwargs={"bandwidth": "median"},
    name="mmd",
)
loss = jp.regularize(loss_fn, [mmd_penalty])
encoder_optimizer = optax.adam(1e-2)
BATCH, STEPS = 64, 300


@jax.jit
def train_encoder(encoder, data, weight, key):
    def step(carry, key):
        encoder, state = carry
        k1, k2 = jax.random.split(key)
        n, m = data["x_unlabelled"].shape[0], data["bank"].shape[0]
        batch = {
            "x_labelled": data["x_labelled"],
            "y_labelled": data["y_labelled"],
            "head": data["head"],
            "x_unlabelled": data["x_unlabelled"][
                jax.random.choice(k1, n, (BATCH,), replace=False)
            ],
            "teacher_features": data["bank"][
                jax.random.choice(k2, m, (BATCH,), replace=False)
            ],
        }
        (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(
            encoder, batch, weights={"mmd": weight}
        )
        updates, state = encoder_optimizer.update(grads, state)
        encoder = optax.apply_updates(encoder, updates)
        return (encoder, state), (aux["loss"], aux["penalties"]["mmd"]["value"])

    init = (encoder, encoder_optimizer.init(encoder))
    keys = jax.random.split(key, STEPS)
    (encoder, _), history = jax.lax.scan(step, init, keys)
    return encoder, history


@jax.jit
def evaluate(encoder, data):
    features = encode(encoder, data["x_test"])
    logits = features @ data["head"]["w"] + data["head"]["b"]
    accuracy = jnp.mean(jnp.argmax(logits, -1) == data["y_test"])
    return accuracy, jp.mmd(features, data["test_bank"], bandwidth="median")


encoder0 = init_mlp(jax.random.key(3), [64, 32])[0]
mmd_runs = {}
for weight in (0.0, 3.0):
    encoder, history = train_encoder(
        encoder0, mmd_data, jnp.float32(weight), jax.random.key(4)
    )
    mmd_runs[weight] = (history, *evaluate(encoder, mmd_data))
start_mmd = float(evaluate(encoder0, mmd_data)[1])

print(f"test MMD² before training: {start_mmd:.4f}")
print(f"{'mmd weight':>10} {'test accuracy':>14} {'test MMD²':>10}")
for weight, (_, accuracy, test_mmd) in mmd_runs.items():
    print(f"{weight:>10g} {float(accuracy):>14.3f} {float(test_mmd):>10.4f}")

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for weight, ((_, batch_mmd), _, _) in mmd_runs.items():
    ax.plot(np.asarray(batch_mmd), label=f"weight {weight:g}", alpha=0.8)
ax.set_yscale("symlog", linthresh=1e-2)
ax.set_xlabel("training step")
ax.set_ylabel("MMD² (batch of 64 vs 64, unbiased)")
ax.set_title("Student features vs the teacher's feature bank")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()

# %% [markdown]
# The cross-entropy through the frozen head already moves the features
# towards the teacher's (MMD² falls without the penalty too, to about a
# quarter), but with the penalty it falls ten times further, on held-out
# images as well. (The unbiased estimator can dip below 0 on a batch; it is
# not clamped.)
#
# MMD matches the two *distributions* of features, not image by image, so
# it does not tell the student which cluster is which digit: that is still
# up to the ten labels. Its effect on the accuracy is small, and it varies
# with which ten images are labelled (from about 0 to +8 points in our
# trials).
# Where the same inputs go through both models, a per-row loss on the
# features (or a divergence on the outputs) is the direct choice; MMD is
# for sets that cannot be paired: a stored bank, other data, other
# domains.
#
# ## Checks
#
# The statements above, as assertions:

# %%
acc = {name: float(a.mean()) for name, a in final_acc.items()}
# Part 1: the shared-part KL is far ahead; ULD beats hard labels alone, and
# part of its gain comes from the per-image teacher (the shuffled control).
assert acc["+ KL on the shared part"] > 0.95, acc
assert acc["+ KL on the shared part"] > acc["+ ULD"] + 0.02, acc
assert acc["+ ULD"] > acc["hard labels only"] + 0.04, acc
assert acc["+ ULD"] > acc["+ ULD, teacher shuffled"] + 0.02, acc
assert sweep["+ ULD", 4.0] > sweep["+ ULD", 1.0] + 0.04, sweep

# Part 2: forward KL and α = 0 cover both modes, identically; reverse KL and
# α = 1 settle on one mode; α = 0.5 covers, α = 0.9 seeks.
for name in ("forward KL(P‖Q)", "α = 0", "α = 0.5", "skew KL λ = 0.1"):
    theta, _ = fits[name]
    assert abs(float(theta[0])) < 0.1 and float(jnp.exp(theta[1])) > 2.0, name
for name in ("reverse KL(Q‖P)", "α = 0.9", "α = 1"):
    theta, _ = fits[name]
    assert abs(float(theta[0]) - 2.5) < 0.1, name
    assert abs(float(jnp.exp(theta[1])) - 0.6) < 0.05, name
np.testing.assert_allclose(
    fits["α = 0"][0], fits["forward KL(P‖Q)"][0], rtol=1e-4, atol=1e-5
)
np.testing.assert_allclose(
    jp.alpha_divergence(one_mode, target, alpha=1.0), np.log(2.0), rtol=1e-4
)
np.testing.assert_allclose(jp.total_variation(one_mode, target), 0.5, rtol=1e-4)
assert prefers["forward KL(P‖Q)"] == "cover both"
assert prefers["reverse KL(Q‖P)"] == prefers["α = 1"] == "one mode"
assert prefers["TV"] == prefers["skew reverse KL λ = 0.1"] == "one mode"

# Part 3: the penalty cuts the held-out MMD² about tenfold; the batch MMD²
# it reports falls with it (and is reported at weight 0 too).
(history_off, _, mmd_off), (history_on, _, mmd_on) = mmd_runs[0.0], mmd_runs[3.0]
assert float(mmd_on) < float(mmd_off) / 5 < start_mmd / 5, (mmd_on, mmd_off)
late_on, late_off = history_on[1][-50:].mean(), history_off[1][-50:].mean()
assert float(late_on) < float(late_off) / 5 < float(history_off[1][0]) / 5

elapsed = time.perf_counter() - start_time
print(f"all checks passed ({elapsed:.0f} s)")
