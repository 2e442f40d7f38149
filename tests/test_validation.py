"""Tests for check_finite: eager reports, and checkify reports under jax.jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jaxpenalties as jp


def params_with(value):
    return {
        "dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.array([0.0, value, 1.0])},
        "steps": jnp.arange(3),  # integer leaves are skipped
        "extra": (np.ones(2, np.float32), None),
    }


# ---------------------------------------------------------------------------
# Eager
# ---------------------------------------------------------------------------


def test_clean_tree_is_returned_unchanged():
    tree = params_with(2.0)
    assert jp.check_finite(tree) is tree
    x = jnp.ones(3)
    assert jp.check_finite(x, "x") is x
    assert jp.check_finite({}) == {}
    mixed = {"name": "layer", "w": np.ones(2), "n": 3}  # non-numeric leaf skipped
    assert jp.check_finite(mixed) is mixed


@pytest.mark.parametrize(
    "value,kind", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")]
)
def test_eager_report_names_value_path_and_kind(value, kind):
    pattern = rf"params\['dense'\]\['bias'\] contains {kind} \(1 of 3 elements\)"
    with pytest.raises(checkify.JaxRuntimeError, match=pattern):
        jp.check_finite(params_with(value), "params")
    # JaxRuntimeError is a ValueError: a plain `except ValueError` catches it.
    with pytest.raises(ValueError, match=f"value contains {kind}"):
        jp.check_finite(jnp.array([1.0, value]))


def test_counts_and_low_precision_and_numpy_leaves():
    x = jnp.array([np.nan, 1.0, np.nan, np.nan], jnp.bfloat16)
    with pytest.raises(ValueError, match=r"logits contains NaN \(3 of 4 elements\)"):
        jp.check_finite(x, "logits")
    with pytest.raises(ValueError, match=r"t\[1\] contains Inf"):
        jp.check_finite([np.ones(2), np.array([np.inf], np.float16)], "t")


def test_eager_inside_grad_and_vmap():
    def loss(x):
        jp.check_finite(x, "x")
        return jnp.sum(x**2)

    np.testing.assert_array_equal(jax.grad(loss)(jnp.ones(2)), [2.0, 2.0])
    with pytest.raises(ValueError, match="x contains NaN"):
        jax.grad(loss)(jnp.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="x contains Inf"):
        jax.vmap(loss)(jnp.array([[1.0], [np.inf]]))


# ---------------------------------------------------------------------------
# Under jax.jit, through checkify
# ---------------------------------------------------------------------------


def _step(params):
    params = jp.check_finite(params, "params")
    return jp.l2(params["dense"])


def test_jit_with_checkify_reports_and_throws():
    checked = checkify.checkify(jax.jit(_step))
    err, out = checked(params_with(2.0))
    assert err.get() is None
    err.throw()  # no error: does nothing
    np.testing.assert_allclose(out, 6 + 4 + 1)  # ones(2, 3) and [0, 2, 1]
    err, _ = checked(params_with(np.nan))
    assert "params['dense']['bias'] contains NaN (1 of 3 elements)" in err.get()
    with pytest.raises(checkify.JaxRuntimeError, match="contains NaN"):
        err.throw()
    err, _ = checked(params_with(np.inf))
    assert "contains Inf" in err.get()


def test_checkify_outside_jit_and_with_grad():
    params = params_with(-np.inf)["dense"]
    err, _ = checkify.checkify(jax.grad(lambda p: _step({"dense": p})))(params)
    assert "params['dense']['bias'] contains Inf" in err.get()
    err, _ = jax.jit(checkify.checkify(_step))(params_with(1.0))
    assert err.get() is None


def test_jit_without_checkify_fails_loudly():
    with pytest.raises(ValueError, match="checkify"):
        jax.jit(_step)(params_with(1.0))


def test_name_must_be_a_string():
    with pytest.raises(TypeError, match="`name` to be a str"):
        jp.check_finite(jnp.ones(2), name=3)
    with pytest.raises(TypeError, match="`name` must be a static Python value"):
        jp.check_finite(jnp.ones(2), name=jnp.ones(1))


def test_braces_in_names_are_not_format_fields():
    with pytest.raises(ValueError, match=r"\{weird\}\['k'\] contains NaN"):
        jp.check_finite({"k": jnp.array([np.nan])}, "{weird}")
