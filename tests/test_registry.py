"""One sweep over every public array function (the registry battery).

Each entry builds its inputs for a dtype and returns a scalar; adding a function
to REGISTRY gives it every check below: value under jit equals eager, finite
gradients w.r.t. every floating input, scalar float32 output for float32 /
bfloat16 / float16 inputs (float64 under x64), gradients in the input dtype, and
no recompilation on a second call with new values.
"""

import inspect
import pathlib
import re
import tomllib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpenalties as jp
from tests.helpers import count_compiles


def _logprobs(key, shape, dtype):
    return jax.nn.log_softmax(jax.random.normal(key, shape)).astype(dtype)


def _divergence_inputs(key, dtype):
    k1, k2 = jax.random.split(key)
    return _logprobs(k1, (3, 4, 7), dtype), _logprobs(k2, (3, 4, 7), dtype)


def _sampled_inputs(key, dtype):
    k1, k2 = jax.random.split(key)
    lp = -jax.random.uniform(k1, (3, 5), minval=0.1, maxval=3.0)
    ref = -jax.random.uniform(k2, (3, 5), minval=0.1, maxval=3.0)
    return lp.astype(dtype), ref.astype(dtype)


def _matrix(key, dtype, shape=(6, 4)):
    return jax.random.normal(key, shape).astype(dtype)


def _pair(key, dtype, shape=(5, 6)):
    k1, k2 = jax.random.split(key)
    return _matrix(k1, dtype, shape), _matrix(k2, dtype, shape)


def _fused_inputs(key, dtype):
    kx, kw, krx, krw = jax.random.split(key, 4)
    return (
        _matrix(kx, dtype, (2, 5, 8)),
        (0.3 * _matrix(kw, dtype, (8, 16))).astype(dtype),
        _matrix(krx, dtype, (2, 5, 6)),
        (0.3 * _matrix(krw, dtype, (6, 16))).astype(dtype),
    )


_TOKENS = jnp.asarray(np.arange(10).reshape(2, 5) * 3 % 16)  # fused_inputs' V = 16


_TOP3 = jnp.asarray(np.argsort(np.arange(84).reshape(3, 4, 7) * 5 % 7)[..., :3])


def _sparse_inputs(key, dtype):
    student, teacher = _divergence_inputs(key, dtype)
    return student, jnp.take_along_axis(teacher, _TOP3, axis=-1)


_IDX = jnp.asarray(np.arange(30).reshape(2, 5, 3) * 7 % 16)  # distinct per row


def _fused_sparse_inputs(key, dtype):
    x, w = _fused_inputs(key, dtype)[:2]
    teacher = _logprobs(jax.random.fold_in(key, 1), (2, 5, 16), dtype)
    return x, w, jnp.take_along_axis(teacher, _IDX, axis=-1)


def _critic(x):
    return jnp.sum(jnp.tanh(x) ** 2, axis=-1)


# Functions of the same inputs, by their inputs(key, dtype): name -> function of
# the arrays returning a scalar.
_BY_INPUTS = {
    _divergence_inputs: {
        "kl_divergence": jp.kl_divergence,
        "kl_divergence_reverse": partial(jp.kl_divergence, direction="reverse"),
        "kl_divergence_symmetric_T2": partial(
            jp.kl_divergence, symmetric=True, temperature=2.0
        ),
        "js_divergence": partial(jp.js_divergence, beta=0.3),
        "consistency_kl": partial(jp.consistency, metric="kl"),
    },
    _sampled_inputs: {
        "kl_estimate_k3": jp.kl_estimate,
        "kl_estimate_k1_sum": partial(jp.kl_estimate, estimator="k1", reduction="sum"),
    },
    lambda k, d: (_matrix(k, d),): {
        "l1": jp.l1,
        "l2": jp.l2,
        "l2_center_mean_clip": partial(
            jp.l2, center="mean", clip=1.0, reduction="mean"
        ),
        "elastic_net": jp.elastic_net,
        "orthogonality_soft": jp.orthogonality,
        "gradient_penalty": lambda x: jp.gradient_penalty(_critic, x),
        "output_magnitude_penalty": jp.output_magnitude_penalty,
    },
    _pair: {
        "l2_sp": lambda x, c: jp.l2(x, center=c),
        "consistency_mse": jp.consistency,
        "consistency_l1": partial(jp.consistency, metric="l1"),
        "consistency_cosine": partial(jp.consistency, metric="cosine"),
        "interpolated_gradient_penalty": lambda real, fake: (
            jp.interpolated_gradient_penalty(_critic, real, fake, key=jax.random.key(0))
        ),
    },
    _fused_inputs: {
        "fused_linear_kl_divergence": partial(
            jp.fused_linear_kl_divergence, chunk_size=4
        ),
        "fused_linear_kl_divergence_symmetric": partial(
            jp.fused_linear_kl_divergence, symmetric=True, chunk_size=4
        ),
        "fused_linear_js_divergence": partial(
            jp.fused_linear_js_divergence, chunk_size=4
        ),
        "fused_linear_js_divergence_labels": lambda x, w, rx, rw: (
            jp.fused_linear_js_divergence(
                x, w, rx, rw, labels=_TOKENS, label_smoothing=0.1, chunk_size=4
            )[0]
        ),
    },
    _sparse_inputs: {
        "sparse_kl_divergence": lambda s, t: jp.sparse_kl_divergence(s, _TOP3, t),
        "sparse_js_divergence_bucket": lambda s, t: jp.sparse_js_divergence(
            s, _TOP3, t, tail="bucket", beta=0.3
        ),
    },
    _fused_sparse_inputs: {
        "fused_linear_sparse_kl_divergence_bucket": lambda x, w, t: (
            jp.fused_linear_sparse_kl_divergence(
                x, w, _IDX, t, tail="bucket", chunk_size=4
            )
        ),
    },
    lambda k, d: _divergence_inputs(k, d)[:1]: {
        "entropy": lambda p: jp.entropy(p, normalize=True),
    },
    lambda k, d: (_matrix(k, d, (3, 5)),): {
        "aggregate_seq_mean_token_mean": lambda v: jp.aggregate(
            v, mode="seq-mean-token-mean"
        ),
        "orthogonality_spectral": partial(jp.orthogonality, mode="spectral"),
    },
    lambda k, d: (_matrix(k, d, (9, 4)),): {
        "orthogonality_hard": partial(jp.orthogonality, mode="hard"),
    },
    lambda k, d: (_matrix(k, d, (2, 3, 4)),): {
        "orthogonality_3d_sequence": partial(jp.orthogonality, axis="sequence"),
    },
    lambda k, d: (_matrix(k, d, (3, 5)),) + _sampled_inputs(k, d): {
        "kl_penalized_rewards": lambda r, lp, ref: jnp.sum(
            jp.kl_penalized_rewards(r, lp, ref, 0.1)
        ),
    },
    lambda k, d: _fused_inputs(k, d)[:2]: {
        "fused_linear_token_logprobs_entropy": lambda x, w: sum(
            jnp.sum(v)
            for v in jp.fused_linear_token_logprobs(
                x, w, _TOKENS, entropy=True, chunk_size=4
            )
        ),
    },
}

# name -> (function of the arrays returning a scalar, inputs(key, dtype))
REGISTRY = {
    name: (fn, inputs)
    for inputs, functions in _BY_INPUTS.items()
    for name, fn in functions.items()
}

NAMES = sorted(REGISTRY)


def _inputs(name, dtype, seed=0):
    return REGISTRY[name][1](jax.random.key(seed), dtype)


@pytest.mark.parametrize("name", NAMES)
def test_jit_value_and_finite_gradients(name):
    fn, _ = REGISTRY[name]
    args = _inputs(name, jnp.float32)
    value = fn(*args)
    assert value.shape == () and value.dtype == jnp.float32
    assert np.isfinite(value)
    np.testing.assert_allclose(jax.jit(fn)(*args), value, rtol=1e-5, atol=1e-6)
    grads = jax.grad(fn, argnums=tuple(range(len(args))))(*args)
    for g, x in zip(grads, args, strict=True):
        assert g.shape == x.shape and g.dtype == x.dtype
        assert np.isfinite(g).all(), name


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_inputs_give_float32(name, dtype):
    fn, _ = REGISTRY[name]
    args = _inputs(name, dtype)
    value = fn(*args)
    assert value.dtype == jnp.float32, name
    # Computed in float32 from the rounded inputs.
    ref = fn(*(x.astype(jnp.float32) for x in args))
    np.testing.assert_allclose(value, ref, rtol=2e-3, atol=2e-3)
    grads = jax.grad(fn, argnums=tuple(range(len(args))))(*args)
    for g, x in zip(grads, args, strict=True):
        assert g.dtype == x.dtype
        assert np.isfinite(np.asarray(g, np.float32)).all(), name


@pytest.mark.parametrize("name", NAMES)
def test_float64_under_x64(name):
    fn, _ = REGISTRY[name]
    with jax.enable_x64(True):
        args = _inputs(name, jnp.float64)
        value = fn(*args)
        assert value.dtype == jnp.float64, name


@pytest.mark.parametrize("name", NAMES)
def test_second_call_does_not_recompile(name):
    fn, _ = REGISTRY[name]
    jitted = jax.jit(fn)
    jax.block_until_ready(
        (fn(*_inputs(name, jnp.float32)), jitted(*_inputs(name, jnp.float32)))
    )
    with count_compiles() as compiles:
        jax.block_until_ready(fn(*_inputs(name, jnp.float32, seed=1)))
        jax.block_until_ready(jitted(*_inputs(name, jnp.float32, seed=2)))
        assert compiles() == 0, name


def test_every_public_name_is_documented_with_an_example():
    public = {
        n
        for n in dir(jp)
        if not n.startswith("_") and not inspect.ismodule(getattr(jp, n))
    }
    assert sorted(jp.__all__) == sorted(public)
    for name in jp.__all__:
        obj = getattr(jp, name)
        doc = inspect.getdoc(obj) or ""
        if _is_state(obj):
            continue  # checked by test_exported_states_belong_to_a_transformation
        assert len(doc.splitlines()) > 3, name
        assert ">>>" in doc, f"{name} has no runnable example"


def _is_state(obj):
    """An optax-style transformation state: a NamedTuple class named *State."""
    return (
        inspect.isclass(obj)
        and issubclass(obj, tuple)
        and hasattr(obj, "_fields")
        and obj.__name__.endswith("State")
    )


def test_exported_states_belong_to_a_transformation():
    """As optax exports its transformations' states: each exported state names
    the exported transformation whose ``init`` returns it, and it does."""
    states = [name for name in jp.__all__ if _is_state(getattr(jp, name))]
    assert sorted(states) == ["L2SPState", "PenaltyGradientState"]
    params = {"w": jnp.ones(3)}
    made = {
        "add_penalty_gradient": jp.add_penalty_gradient(jp.l1, 0.1).init(params),
        "add_l2_sp_decay": jp.add_l2_sp_decay(0.1, params).init(params),
    }
    for name in states:
        state_cls = getattr(jp, name)
        doc = inspect.getdoc(state_cls) or ""
        transform = next(t for t in jp.__all__ if f":func:`{t}`" in doc)
        assert isinstance(made[transform], state_cls), (name, transform)
        assert int(made[transform].count) == 0, name


ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_version_is_defined_once():
    # A release version ...
    assert re.fullmatch(r"\d+\.\d+\.\d+", jp.__version__), jp.__version__
    # ... that the package metadata reads from jaxpenalties.__version__ ...
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "jaxpenalties.__version__"}
    # ... written in one place in the package ...
    sources = sorted((ROOT / "jaxpenalties").glob("*.py"))
    assignments = [
        (path.name, line)
        for path in sources
        for line in path.read_text().splitlines()
        if re.match(r"\s*__version__\s*=", line)
    ]
    assert assignments == [("__init__.py", f'__version__ = "{jp.__version__}"')]
    # ... and the latest released CHANGELOG section.
    changelog = (ROOT / "CHANGELOG.md").read_text()
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", changelog, re.MULTILINE)
    assert released and released[0] == jp.__version__, released
