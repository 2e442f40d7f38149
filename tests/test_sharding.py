"""Every divergence under jax.jit on a simulated 8-device CPU mesh equals its
single-device result: positions sharded (data parallel) and the vocabulary
sharded (tensor-parallel head), with automatic and explicit sharding.

The 8 CPU devices come from ``jax_num_cpu_devices``, set in ``conftest.py``
before any backend starts; everything here runs on those CPU devices, also on
a machine with an accelerator. Each case records ``error``, the largest
deviation of the sharded value and gradients from the single-device ones
(relative to each array's largest magnitude), ``all_gathers``, the all-gather
ops in the compiled sharded program, ``loop_kernel_all_reduces``, all-reduces
of a head-kernel-sized array inside the chunk loop (weight gradients summed
over devices once per chunk instead of once), and the gradients' and inputs'
partition specs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxpenalties as jp

B, T, H, HR, V, K = 8, 4, 16, 12, 64, 4


def relative_error(got, want) -> float:
    errors = []
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        g, e = np.asarray(g, np.float64), np.asarray(e, np.float64)
        scale = max(1.0, float(np.max(np.abs(e), initial=0.0)))
        errors.append(float(np.max(np.abs(g - e), initial=0.0)) / scale)
    return max(errors)


def run_case(name, f, args, specs, mesh, argnums):
    """Value and gradients of ``f`` with ``args`` sharded by ``specs`` on
    ``mesh``, compared with the same jitted function on one device."""
    fn = jax.jit(jax.value_and_grad(f, argnums=argnums))
    want = fn(*args)
    sharded = [
        jax.device_put(a, NamedSharding(mesh, spec))
        for a, spec in zip(args, specs, strict=True)
    ]
    got = fn(*sharded)
    hlo = fn.lower(*sharded).compile().as_text()
    kernels = [a for a in sharded if a.ndim == 2 and a.shape[-1] == V]
    grads = got[1]
    grad_specs = [str(g.sharding.spec) for g in grads]
    input_specs = [str(sharded[i].sharding.spec) for i in argnums]
    return {
        "case": name,
        "error": relative_error(got, want),
        "all_gathers": hlo.count("all-gather-start") + hlo.count(" all-gather("),
        "loop_kernel_all_reduces": loop_all_reduces(hlo, kernels),
        "grad_specs": grad_specs,
        "input_specs": input_specs,
    }


def loop_all_reduces(hlo: str, kernels) -> int:
    """All-reduces of a head-kernel-sized ([H, V] shard) array outside the
    entry computation, i.e. inside the chunk loop: one per chunk."""
    shapes = set()
    for k in kernels:
        h, v = k.sharding.shard_shape(k.shape)
        shapes.add(f"f32[{h},{v}]")
    count, in_entry = 0, False
    for line in hlo.splitlines():
        if line and not line.startswith(" "):
            in_entry = line.startswith("ENTRY")
        if not in_entry and "all-reduce" in line and "=" in line:
            result = line.split("=", 1)[1].split("all-reduce", 1)[0]
            count += any(shape in result for shape in shapes)
    return count


def random_inputs(seed=0):
    rng = np.random.default_rng(seed)
    p = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(B, T, V)) * 2, jnp.float32))
    q = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(B, T, V)) * 2, jnp.float32))
    where = jnp.asarray(rng.random((B, T)) < 0.7)
    x = jnp.asarray(rng.normal(size=(B, T, H)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(H, V)) / 2, jnp.float32)
    rx = jnp.asarray(rng.normal(size=(B, T, HR)), jnp.float32)
    rw = jnp.asarray(rng.normal(size=(HR, V)) / 2, jnp.float32)
    return p, q, where, x, w, rx, rw


def divergence_cases(mesh, tag):
    """The log-prob divergences: positions over "data", vocabulary over "model"."""
    p, q, where, *_ = random_inputs()
    lp = P("data", None, "model")
    cases = {
        "kl_forward_temperature": lambda p, q, m: jp.kl_divergence(
            p, q, temperature=2.0, where=m
        ),
        "kl_symmetric_sum": lambda p, q, m: jp.kl_divergence(
            p, q, symmetric=True, reduction="sum", where=m
        ),
        "js_beta": lambda p, q, m: jp.js_divergence(p, q, beta=0.3, where=m),
        "entropy_normalized": lambda p, q, m: jp.entropy(
            p, mode="penalty", normalize=True, where=m
        ),
    }
    for name, f in cases.items():
        yield lazy_case(
            f"{tag}/{name}", f, (p, q, where), (lp, lp, P("data")), mesh, (0, 1)
        )
    # Sampled-token estimator: [B, T] log-probs, no vocabulary axis.
    yield lazy_case(
        f"{tag}/kl_estimate_k3",
        lambda a, b, m: jp.kl_estimate(a, b, where=m),
        (p[..., 0], q[..., 0], where),
        (P("data", "model"), P("data", "model"), P("data", "model")),
        mesh,
        (0, 1),
    )


def fused_cases(mesh, tag, x_spec, w_spec, names=None):
    """The fused divergences with hidden states and head kernels sharded."""
    _, _, where, x, w, rx, rw = random_inputs(1)
    cases = {
        "fused_kl_mean": lambda x, w, rx, rw, m: jp.fused_linear_kl_divergence(
            x, w, rx, rw, chunk_size=8
        ),
        "fused_kl_none_where": lambda x, w, rx, rw, m: jnp.sum(
            jp.fused_linear_kl_divergence(
                x, w, rx, rw, reduction="none", where=m, symmetric=True, chunk_size=8
            )
        ),
        "fused_js_sum_temperature": lambda x, w, rx, rw, m: (
            jp.fused_linear_js_divergence(
                x, w, rx, rw, beta=0.3, temperature=2.0, reduction="sum", where=m
            )
        ),
    }
    m_spec = P(*x_spec[:2])
    for name, f in cases.items():
        if names is None or name in names:
            yield lazy_case(
                f"{tag}/{name}",
                f,
                (x, w, rx, rw, where),
                (x_spec, w_spec, x_spec, w_spec, m_spec),
                mesh,
                (0, 1, 2, 3),
            )


def ragged_case(mesh, tag):
    """24 positions in chunks of at most 3 rows: 12 chunks of 2 rows, which do
    not split over the 4 position shards (XLA reshards; still exact)."""
    _, _, _, x, w, rx, rw = random_inputs(2)
    x, rx = x[:, :3], rx[:, :3]
    yield lazy_case(
        f"{tag}/fused_kl_ragged_chunks",
        lambda x, w, rx, rw: jp.fused_linear_kl_divergence(x, w, rx, rw, chunk_size=3),
        (x, w, rx, rw),
        (P("data"), P(None, "model"), P("data"), P(None, "model")),
        mesh,
        (0, 1, 2, 3),
    )


def sequence_sharded_case(mesh, tag):
    """Positions sharded along the sequence axis (not the leading one), with an
    unsharded mask: the explicitly sharded axis is moved first before the
    positions are flattened; per-position values come back in place."""
    _, _, where, x, w, rx, rw = random_inputs(3)
    weights = jnp.arange(B * T, dtype=jnp.float32).reshape(B, T)
    yield lazy_case(
        f"{tag}/fused_kl_none_sequence_sharded",
        lambda x, w, rx, rw, m: jnp.sum(
            weights
            * jp.fused_linear_kl_divergence(
                x, w, rx, rw, reduction="none", where=m, chunk_size=8
            )
        ),
        (x, w, rx, rw, where),
        (P(None, "data"), P(None, "model"), P(None, "data"), P(None, "model"), P()),
        mesh,
        (0, 1, 2, 3),
    )


def lazy_case(name, *args):
    """``(name, thunk)``: the case runs when a test first asks for it, so each
    test worker compiles only the cases of its own tests."""
    return name, lambda: run_case(name, *args)


def id_inputs(seed=4):
    """Hard labels (one ignored), sampled tokens (garbage where masked) and a
    top-k teacher, for the paths that read a vocabulary entry by its id."""
    rng = np.random.default_rng(seed)
    _, _, where, x, w, rx, rw = random_inputs(seed)
    labels = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
    tokens = jnp.where(where, labels, -1)
    labels = labels.at[0, 1].set(-100)
    teacher = jax.nn.log_softmax(rx @ rw)
    idx = jnp.argsort(-teacher, axis=-1)[..., :K].astype(jnp.int32)
    top = jnp.take_along_axis(teacher, idx, axis=-1)
    p = jax.nn.log_softmax(x @ w)
    return where, x, w, rx, rw, labels, tokens, idx, top, p


def id_cases(mesh, tag, x_spec, w_spec):
    """Hard labels in the fused pass, sampled-token log-probs and the top-k
    teachers (fused, and on log-probs sharded like the positions and the
    head's vocabulary): the gathers and scatters at ids."""
    where, x, w, rx, rw, labels, tokens, idx, top, p = id_inputs()
    pos = P(*(tuple(x_spec) + (None, None))[:2])
    lp = P(*pos, *tuple(w_spec)[1:])
    heads, head_specs = (x, w, rx, rw), (x_spec, w_spec, x_spec, w_spec)
    weights = jnp.arange(1, B * T + 1, dtype=jnp.float32).reshape(B, T) / (B * T)

    def token_logprobs(x, w, m, tok):
        lp, ent = jp.fused_linear_token_logprobs(
            x, w, tok, where=m, entropy=True, chunk_size=8
        )
        return jnp.sum(weights * lp) + jnp.sum(weights * ent)

    cases = {
        "fused_kl_labels": (
            lambda x, w, rx, rw, m, y: jp.fused_linear_kl_divergence(
                x, w, rx, rw, where=m, labels=y, label_smoothing=0.1, chunk_size=8
            )[0],
            (*heads, where, labels),
            (*head_specs, pos, pos),
            (0, 1, 2, 3),
        ),
        "token_logprobs": (
            token_logprobs,
            (x, w, where, tokens),
            (x_spec, w_spec, pos, pos),
            (0, 1),
        ),
        "fused_sparse_js": (
            lambda x, w, i, t, m: jp.fused_linear_sparse_js_divergence(
                x, w, i, t, where=m, chunk_size=8
            ),
            (x, w, idx, top, where),
            (x_spec, w_spec, pos, pos, pos),
            (0, 1, 3),
        ),
        "sparse_kl_bucket": (
            lambda p, i, t, m: jp.sparse_kl_divergence(
                p, i, t, tail="bucket", where=m, reduction="sum"
            ),
            (p, idx, top, where),
            (lp, pos, pos, pos),
            (0, 2),
        ),
    }
    for name, (f, args, specs, argnums) in cases.items():
        yield lazy_case(f"{tag}/{name}", f, args, specs, mesh, argnums)


def every_function_case(mesh, tag, x_spec, w_spec):
    """Every function of docs/large_vocab.md in one program (one compile per
    mesh): the meshes with one axis."""
    where, x, w, rx, rw, labels, tokens, idx, top, p = id_inputs(5)
    q = jax.nn.log_softmax(rx @ rw)
    pos = P(*(tuple(x_spec) + (None, None))[:2])
    lp = P(*pos, *tuple(w_spec)[1:])

    def everything(x, w, rx, rw, p, q, top, m, y, tok, i):
        heads = (x, w, rx, rw)
        logp = jp.fused_linear_token_logprobs(x, w, tok, where=m, chunk_size=8)
        ref = jp.fused_linear_token_logprobs(rx, rw, tok, where=m, chunk_size=8)
        terms = [
            jp.fused_linear_kl_divergence(*heads, where=m, chunk_size=8),
            jp.fused_linear_js_divergence(*heads, where=m, labels=y, chunk_size=8)[0],
            jp.fused_linear_sparse_kl_divergence(x, w, i, top, where=m, chunk_size=8),
            jp.sparse_js_divergence(p, i, top, where=m),
            jp.kl_divergence(p, q, where=m, temperature=2.0),
            jp.js_divergence(p, q, where=m),
            jp.entropy(p, where=m),
            jp.kl_estimate(logp, ref, where=m),
        ]
        return sum(terms[1:], terms[0])

    args = (x, w, rx, rw, p, q, top, where, labels, tokens, idx)
    specs = (x_spec, w_spec, x_spec, w_spec, lp, lp, pos, pos, pos, pos, pos)
    yield lazy_case(
        f"{tag}/every_function", everything, args, specs, mesh, (0, 1, 2, 3, 4, 5, 6)
    )


def all_cases():
    cpus = jax.devices("cpu")
    if len(cpus) != 8:
        pytest.skip(f"8 CPU devices needed, got {cpus}")
    cases = []
    for kind in ("Auto", "Explicit"):
        axis_type = getattr(AxisType, kind)

        def mesh(shape, names, axis_type=axis_type):
            return jax.make_mesh(
                shape, names, axis_types=(axis_type,) * len(names), devices=cpus
            )

        tag = f"{kind}/data4xmodel2"
        mesh42 = mesh((4, 2), ("data", "model"))
        cases += divergence_cases(mesh42, tag)
        cases += fused_cases(mesh42, tag, P("data"), P(None, "model"))
        cases += id_cases(mesh42, tag, P("data"), P(None, "model"))
        if kind == "Explicit":
            cases += sequence_sharded_case(mesh42, tag)
        if kind == "Auto":
            cases += ragged_case(mesh42, tag)
        cases += every_function_case(
            mesh((8,), ("data",)), f"{kind}/data8", P("data"), P()
        )
        cases += every_function_case(
            mesh((8,), ("model",)), f"{kind}/model8", P(), P(None, "model")
        )
    return dict(cases)


class Report:
    """Case name -> its result, each case run (and cached) on first use."""

    def __init__(self):
        self.cases = all_cases()
        self.results = {}

    def __getitem__(self, name):
        if name not in self.results:
            # The unsharded reference runs on a CPU device too.
            with jax.default_device(jax.devices("cpu")[0]):
                self.results[name] = self.cases[name]()
        return self.results[name]


@pytest.fixture(scope="module")
def report():
    return Report()


def normalized(spec: str) -> str:
    """P('data', None, None) and P('data',) describe the same sharding."""
    inner = spec[2:-1].rstrip(", ")
    while inner.endswith("None"):
        inner = inner[: -len("None")].rstrip(", ")
    return inner


FUNCTIONS = [
    "kl_forward_temperature",
    "kl_symmetric_sum",
    "js_beta",
    "entropy_normalized",
    "kl_estimate_k3",
    "fused_kl_mean",
    "fused_kl_none_where",
    "fused_js_sum_temperature",
    "fused_kl_labels",
    "token_logprobs",
    "fused_sparse_js",
    "sparse_kl_bucket",
]
MESHES = ["Auto/data4xmodel2", "Explicit/data4xmodel2"]


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("name", FUNCTIONS)
def test_sharded_equals_single_device(report, mesh, name):
    r = report[f"{mesh}/{name}"]
    assert r["error"] < 2e-6, r
    # Nothing is gathered onto every device: no all-gather in the program.
    assert r["all_gathers"] == 0, r
    # Each gradient keeps its input's sharding (entropy has one input only).
    pairs = list(zip(r["grad_specs"], r["input_specs"], strict=True))
    if name == "entropy_normalized":
        pairs = pairs[:1]
    if name == "sparse_kl_bucket" and mesh.startswith("Auto"):
        # The student's gradient is a scatter of k entries per row into
        # [B, T, V] zeros, whose sharding automatic axes leave to XLA: it
        # keeps "data" only (under explicit axes it keeps both).
        pairs = pairs[1:]
    for grad_spec, input_spec in pairs:
        assert normalized(grad_spec) == normalized(input_spec), r


@pytest.mark.parametrize(
    "name",
    [
        "fused_kl_mean",
        "fused_kl_none_where",
        "fused_js_sum_temperature",
        "fused_kl_none_sequence_sharded",
        "fused_kl_labels",
        "token_logprobs",
        "fused_sparse_js",
    ],
)
def test_explicit_sharding_sums_weight_gradients_once(report, name):
    # With explicitly sharded rows, each device keeps its own partial x^T dz
    # over the chunks and the partial sums are added once after the loop: no
    # [H, V]-sized all-reduce inside the chunk loop.
    r = report[f"Explicit/data4xmodel2/{name}"]
    assert r["loop_kernel_all_reduces"] == 0, r


@pytest.mark.parametrize("kind", ["Auto", "Explicit"])
@pytest.mark.parametrize("mesh", ["data8", "model8"])
def test_every_function_on_one_axis_meshes(report, mesh, kind):
    r = report[f"{kind}/{mesh}/every_function"]
    assert r["error"] < 2e-6 and r["all_gathers"] == 0, r
    for grad_spec, input_spec in zip(r["grad_specs"], r["input_specs"], strict=True):
        assert normalized(grad_spec) == normalized(input_spec), r


def test_explicit_sequence_sharding_keeps_the_sharding(report):
    r = report["Explicit/data4xmodel2/fused_kl_none_sequence_sharded"]
    assert r["error"] < 2e-6 and r["all_gathers"] == 0, r
    for grad_spec, input_spec in zip(r["grad_specs"], r["input_specs"], strict=True):
        assert normalized(grad_spec) == normalized(input_spec), r


def test_chunks_that_do_not_split_over_shards_are_still_exact(report):
    r = report["Auto/data4xmodel2/fused_kl_ragged_chunks"]
    assert r["error"] < 2e-6, r
