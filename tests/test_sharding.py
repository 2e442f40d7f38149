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

B, T, H, HR, V = 8, 4, 16, 12, 64


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
    kernels = [sharded[i] for i in (1, 3) if len(args) >= 4]
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
        yield run_case(
            f"{tag}/{name}", f, (p, q, where), (lp, lp, P("data")), mesh, (0, 1)
        )
    # Sampled-token estimator: [B, T] log-probs, no vocabulary axis.
    yield run_case(
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
            yield run_case(
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
    yield run_case(
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
    yield run_case(
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


def all_cases():
    cpus = jax.devices("cpu")
    if len(cpus) != 8:
        pytest.skip(f"8 CPU devices needed, got {cpus}")
    results = []
    for kind in ("Auto", "Explicit"):
        axis_type = getattr(AxisType, kind)

        def mesh(shape, names, axis_type=axis_type):
            return jax.make_mesh(
                shape, names, axis_types=(axis_type,) * len(names), devices=cpus
            )

        tag = f"{kind}/data4xmodel2"
        mesh42 = mesh((4, 2), ("data", "model"))
        results += divergence_cases(mesh42, tag)
        results += fused_cases(mesh42, tag, P("data"), P(None, "model"))
        if kind == "Explicit":
            results += sequence_sharded_case(mesh42, tag)
        if kind == "Auto":
            results += ragged_case(mesh42, tag)
            results += fused_cases(
                mesh((8,), ("data",)),
                f"{kind}/data8",
                P("data"),
                P(),
                names=("fused_kl_mean",),
            )
            results += fused_cases(
                mesh((8,), ("model",)),
                f"{kind}/model8",
                P(),
                P(None, "model"),
                names=("fused_kl_mean",),
            )
    return results


@pytest.fixture(scope="module")
def report():
    # The unsharded reference runs on a CPU device too.
    with jax.default_device(jax.devices("cpu")[0]):
        return {r["case"]: r for r in all_cases()}


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
    for grad_spec, input_spec in pairs:
        assert normalized(grad_spec) == normalized(input_spec), r


@pytest.mark.parametrize(
    "name",
    [
        "fused_kl_mean",
        "fused_kl_none_where",
        "fused_js_sum_temperature",
        "fused_kl_none_sequence_sharded",
    ],
)
def test_explicit_sharding_sums_weight_gradients_once(report, name):
    # With explicitly sharded rows, each device keeps its own partial x^T dz
    # over the chunks and the partial sums are added once after the loop: no
    # [H, V]-sized all-reduce inside the chunk loop.
    r = report[f"Explicit/data4xmodel2/{name}"]
    assert r["loop_kernel_all_reduces"] == 0, r


@pytest.mark.parametrize("mesh", ["Auto/data8", "Auto/model8"])
def test_fused_on_one_axis_meshes(report, mesh):
    r = report[f"{mesh}/fused_kl_mean"]
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
