"""The frameworks' habits: equinox modules and filter_jit, flax.nnx's jit.

* A per-call weight in the documented form (a JAX array of one dtype)
  compiles the regularised step once under ``jax.jit``, ``eqx.filter_jit``
  and ``flax.nnx.jit``; a Python float is static under ``eqx.filter_jit``
  only.
* The parameter penalties and the L2-SP transform take an equinox module as it
  is: its activation functions (and any integer leaf) are not parameters.

Expected values are recomputed by hand from the module's floating leaves.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxpenalties as jp
from tests.helpers import count_compiles

WEIGHTS = (0.1, 0.2, 0.4, 0.8)  # an adaptive β changing every step


def _mlp(seed=0):
    return eqx.nn.MLP(3, 2, 4, 1, activation=jax.nn.relu, key=jax.random.key(seed))


def _floats(module):
    """The module's floating leaves, in float64 (the hand-made reference)."""
    return [
        np.asarray(x, np.float64)
        for x in jax.tree.leaves(module)
        if eqx.is_inexact_array(x)
    ]


def _batch():
    return {"x": jnp.linspace(-1.0, 1.0, 15, dtype=jnp.float32).reshape(5, 3)}


# ---------------------------------------------------------------------------
# Weights under each framework's jit: one compilation, the weight an array
# ---------------------------------------------------------------------------


def _counted(traces):
    """A regularised MSE of a dict-params linear model, counting its traces."""

    def loss_fn(params, batch):
        traces.append(1)  # Python side effect: runs once per trace
        y = batch["x"] @ params["w"]
        return jnp.mean(y**2)

    return jp.regularize(loss_fn, [jp.Penalty(jp.l2, inputs=("params",), name="l2")])


def _params():
    return {"w": jnp.ones((3, 2), jnp.float32)}


def _jax_jit(f):
    return jax.jit(f)


def _eqx_filter_jit(f):
    return eqx.filter_jit(f)


def _nnx_jit(f):
    return nnx.jit(f)


JITS = {"jax.jit": _jax_jit, "eqx.filter_jit": _eqx_filter_jit, "nnx.jit": _nnx_jit}


@pytest.mark.parametrize("jit", sorted(JITS))
def test_a_changing_weight_as_an_array_compiles_once(jit):
    traces = []
    step = JITS[jit](_counted(traces))
    params, batch = _params(), _batch()
    weights = [jnp.asarray(w, jnp.float32) for w in WEIGHTS]  # the documented form
    with count_compiles() as compiles:
        for w in weights:
            total, aux = step(params, batch, weights={"l2": w})
            # The weight really changed: l2(params) = 6, the data loss is fixed.
            np.testing.assert_allclose(
                aux["penalties"]["l2"]["contribution"], 6.0 * float(w), rtol=1e-6
            )
        assert compiles() == 1, jit
    assert len(traces) == 1, jit


# Traces over the 4 weights given as Python floats: equinox's filter_jit traces
# arrays only and holds every other leaf, a Python float included, static (one
# compilation per value); jax.jit and nnx.jit trace the float.
PYTHON_FLOAT_TRACES = {"jax.jit": 1, "eqx.filter_jit": len(WEIGHTS), "nnx.jit": 1}


@pytest.mark.parametrize("jit", sorted(JITS))
def test_a_python_float_weight_is_static_only_under_eqx_filter_jit(jit):
    traces = []
    step = JITS[jit](_counted(traces))
    for w in WEIGHTS:
        step(_params(), _batch(), weights={"l2": w})
    assert len(traces) == PYTHON_FLOAT_TRACES[jit]


@pytest.mark.parametrize("jit", sorted(JITS))
def test_the_weight_dtype_is_part_of_the_signature(jit):
    # Why the documented form names the dtype: jnp.asarray(0.1) is weakly
    # typed, a different type from a float32 weight (a KL controller's state).
    traces = []
    step = JITS[jit](_counted(traces))
    step(_params(), _batch(), weights={"l2": jnp.asarray(0.1)})
    step(_params(), _batch(), weights={"l2": jnp.asarray(0.2, jnp.float32)})
    assert len(traces) == 2


# ---------------------------------------------------------------------------
# Equinox modules as parameter pytrees
# ---------------------------------------------------------------------------


def test_parameter_penalties_skip_activation_functions():
    model = _mlp()
    leaves = _floats(model)
    assert len(leaves) < len(jax.tree.leaves(model))  # relu and the final identity
    want_l1 = sum(np.abs(x).sum() for x in leaves)
    want_l2 = sum((x**2).sum() for x in leaves)
    n = sum(x.size for x in leaves)
    np.testing.assert_allclose(jp.l1(model), want_l1, rtol=1e-6)
    np.testing.assert_allclose(jp.l2(model), want_l2, rtol=1e-6)
    np.testing.assert_allclose(jp.l2(model, reduction="mean"), want_l2 / n, rtol=1e-6)
    np.testing.assert_allclose(
        jp.elastic_net(model, l1_ratio=0.25),
        0.25 * want_l1 + 0.75 * want_l2,
        rtol=1e-6,
    )
    # The filtered module (what optax sees) gives the same numbers.
    filtered = eqx.filter(model, eqx.is_inexact_array)
    np.testing.assert_allclose(jp.l2(filtered), want_l2, rtol=1e-6)


def test_l2_sp_centre_may_be_the_module_filtered_or_not():
    model, base = _mlp(0), _mlp(1)
    want = sum(
        ((a - b) ** 2).sum() for a, b in zip(_floats(model), _floats(base), strict=True)
    )
    filtered = functools.partial(eqx.filter, filter_spec=eqx.is_inexact_array)
    for x, c in [
        (model, base),
        (model, filtered(base)),
        (filtered(model), base),
        (filtered(model), filtered(base)),
    ]:
        np.testing.assert_allclose(jp.l2(x, center=c), want, rtol=1e-6)
    # Another architecture: a short message naming the first difference.
    wider = eqx.nn.MLP(3, 2, 4, 2, key=jax.random.key(2))
    with pytest.raises(ValueError, match="`center`.*structure") as err:
        jp.l2(model, center=wider)
    assert "PyTreeDef" not in str(err.value) and len(str(err.value)) < 400


def test_integer_leaves_are_skipped_but_a_tree_without_floats_raises():
    tree = {"w": jnp.asarray([1.0, -2.0]), "step": jnp.asarray(3, jnp.int32)}
    np.testing.assert_allclose(jp.l2(tree), 5.0)
    np.testing.assert_allclose(jp.l1(tree, reduction="mean"), 1.5)  # 2 elements
    np.testing.assert_allclose(jp.l2(tree, center={"w": jnp.ones(2), "step": 0}), 9.0)
    with pytest.raises(TypeError, match=r"`x\['n'\]` to be a floating-point.*int32"):
        jp.l1({"n": jnp.arange(3)})
    with pytest.raises(TypeError, match="`x` to be a floating-point"):
        jp.l2(jnp.arange(3))


@pytest.mark.parametrize("under", ["filter_jit", "eager"])
def test_penalty_on_params_in_regularize_with_a_module(under):
    def loss_fn(model, batch):
        return jnp.mean(jax.vmap(model)(batch["x"]) ** 2)

    f = jp.regularize(
        loss_fn,
        [jp.Penalty(jp.l2, inputs=("params",), weight=0.01)],
        track_grad_norms=True,
    )
    model, batch = _mlp(), _batch()

    def total(m):
        return f(m, batch)[0]

    grad = eqx.filter_grad(total)
    if under == "filter_jit":
        grad = eqx.filter_jit(grad)
    got = grad(model)
    # By hand: the data loss's gradient plus 0.01 · 2 · leaf.
    want = eqx.filter_grad(lambda m: loss_fn(m, batch))(model)
    for g, w, x in zip(
        jax.tree.leaves(got), jax.tree.leaves(want), _floats(model), strict=True
    ):
        np.testing.assert_allclose(g, np.asarray(w) + 0.02 * x, rtol=1e-5, atol=1e-7)
    _, aux = eqx.filter_jit(f)(model, batch)
    norm = np.sqrt(sum(((0.02 * x) ** 2).sum() for x in _floats(model)))
    np.testing.assert_allclose(aux["penalties"]["l2"]["grad_norm"], norm, rtol=1e-5)


def _l2_sp_by_hand(params, center, weight):
    return [
        weight * 2 * (p - c)
        for p, c in zip(_floats(params), _floats(center), strict=True)
    ]


def test_l2_sp_decay_takes_the_module_as_centre():
    base = _mlp(0)
    params = eqx.filter(
        jax.tree.map(lambda x: x + 0.5 if eqx.is_inexact_array(x) else x, base),
        eqx.is_inexact_array,
    )
    updates = jax.tree.map(jnp.zeros_like, params)
    want = _l2_sp_by_hand(params, base, 0.1)
    for center in (base, eqx.filter(base, eqx.is_inexact_array)):
        tx = jp.add_l2_sp_decay(0.1, center=center)
        state = tx.init(params)
        # The state holds a copy of the floating leaves, never the caller's buffers.
        arrays = [x for x in jax.tree.leaves(center) if eqx.is_inexact_array(x)]
        for c, b in zip(jax.tree.leaves(state.center), arrays, strict=True):
            assert c.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()
        got, _ = eqx.filter_jit(tx.update)(updates, state, params)
        for g, w in zip(jax.tree.leaves(got), want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-6)
    # The same with jp.l2 in add_penalty_gradient, on the unfiltered module.
    tx = jp.add_penalty_gradient(functools.partial(jp.l2, center=base), 0.1)
    got, _ = eqx.filter_jit(tx.update)(updates, tx.init(params), params)
    for g, w in zip(jax.tree.leaves(got), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5)


def test_l2_sp_decay_error_is_short_and_says_how_to_fix():
    params = eqx.filter(_mlp(), eqx.is_inexact_array)
    other = eqx.nn.MLP(3, 2, 8, 2, key=jax.random.key(3))  # a different model
    with pytest.raises(ValueError, match="structure") as err:
        jp.add_l2_sp_decay(0.1, center=other).init(params)
    message = str(err.value)
    assert "PyTreeDef" not in message and len(message) < 700, message
    assert "eqx.filter(model, eqx.is_inexact_array)" in message
    assert "static_args=('center',)" in message


def test_l2_sp_decay_under_inject_hyperparams_with_a_static_centre():
    base = _mlp(0)
    params = eqx.filter(_mlp(1), eqx.is_inexact_array)
    updates = jax.tree.map(jnp.zeros_like, params)
    factory = optax.inject_hyperparams(jp.add_l2_sp_decay, static_args=("center",))
    tx = factory(weight=0.1, center=base)
    state = tx.init(params)
    assert set(state.hyperparams) == {"weight"}
    state.hyperparams["weight"] = jnp.asarray(0.3)  # e.g. a controller's value
    got, state = eqx.filter_jit(tx.update)(updates, state, params)
    want = _l2_sp_by_hand(params, base, 0.3)
    for g, w in zip(jax.tree.leaves(got), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)
