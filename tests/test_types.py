"""Static types: mypy is clean on the package, and the ``Literal`` option aliases
of ``jaxpenalties._core.types`` say exactly what the runtime checks accept."""

import pathlib
import subprocess
import sys
import typing

import jax
import jax.numpy as jnp
import pytest

import jaxpenalties as jp
from jaxpenalties._core import types as t

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_mypy_clean_on_the_package_and_strict_on_options(tmp_path):
    # One mypy run (one cache, never two processes writing it at once) over the
    # package and over user code that sees the package through py.typed: the
    # package has no error, the valid spellings type-check, and each misspelt
    # option is an error before anything runs.
    user = tmp_path / "user.py"
    user.write_text(
        "import jax.numpy as jnp\n"
        "import jaxpenalties as jp\n"
        "x = jnp.ones(3)\n"
        "jp.l1(x, reduction='mean')\n"
        "jp.orthogonality(x, mode='spectral', axis='rows')\n"
        "jp.aggregate(x, mode='token_mean')\n"
        "jp.l1(x, reduction='avg')\n"
        # The overloads on `extremes`: one array, a pair, or (for a bool only
        # known at run time) either.
        "import jax\n"
        "value: jax.Array = jp.kl_divergence(x, x)\n"
        "total, metrics = jp.entropy(x, extremes=True)\n"
        "peak: jax.Array = metrics['max']\n"
        "flag = bool(x.sum())\n"
        "either: jax.Array | tuple[jax.Array, dict[str, jax.Array]]\n"
        "either = jp.kl_estimate(x, x, extremes=flag)\n"
        "pair: tuple[jax.Array, dict[str, jax.Array]] = jp.js_divergence(\n"
        "    x, x, extremes=True\n"
        ")\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "jaxpenalties", str(user)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    report = result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    in_package = [line for line in errors if line.startswith("jaxpenalties")]
    assert not in_package, report
    assert len(errors) == 2 and result.returncode == 1, report
    # `aggregate` has overloads on `extremes`: mypy names the call, not the value.
    assert "user.py:6: error:" in errors[0] and '"aggregate"' in errors[0], report
    assert "user.py:7: error:" in errors[1] and "'avg'" in errors[1], report


_X = jnp.array([[1.0, 0.5], [0.25, 2.0]])
_LOGP = jax.nn.log_softmax(_X)
_IDS = jnp.array([[0], [1]])


def _fn(x):
    return jnp.sum(x, axis=1)


_KEY = {"key": jax.random.key(0)}
_XS = (_X,)
_PAIR = (_X, _X)
_LOGP_PAIR = (_LOGP, _LOGP)
_SPARSE_HEAD = (_X, _X, _IDS, _LOGP[:, :1])

# (public function, valid positional arrays, other keyword arguments, option,
#  alias of its valid values)
OPTIONS = [
    (jp.aggregate, _XS, {}, "mode", t.AggregationMode),
    (jp.orthogonality, _XS, {}, "mode", t.OrthogonalityMode),
    (jp.orthogonality, (_X[None],), {}, "axis", t.OrthogonalityAxis),
    (jp.consistency, _PAIR, {}, "metric", t.ConsistencyMetric),
    (jp.consistency, _PAIR, {}, "reduction", t.Reduction),
    (jp.l1, _XS, {}, "reduction", t.ParamReduction),
    (jp.l2, _XS, {}, "reduction", t.ParamReduction),
    (jp.elastic_net, _XS, {}, "reduction", t.ParamReduction),
    (jp.gradient_penalty, (_fn, _X), {}, "reduction", t.Reduction),
    (
        jp.interpolated_gradient_penalty,
        (_fn, _X, _X),
        _KEY,
        "reduction",
        t.Reduction,
    ),
    (jp.output_magnitude_penalty, _XS, {}, "reduction", t.Reduction),
    (jp.kl_penalized_rewards, (*_PAIR, _X, 0.1), {}, "estimator", t.Estimator),
    (jp.kl_divergence, _LOGP_PAIR, {}, "direction", t.Direction),
    (jp.kl_divergence, _LOGP_PAIR, {}, "reduction", t.Reduction),
    (jp.js_divergence, _LOGP_PAIR, {}, "reduction", t.Reduction),
    (jp.entropy, (_LOGP,), {}, "mode", t.EntropyMode),
    (jp.kl_estimate, _PAIR, {}, "estimator", t.Estimator),
    (jp.kl_estimate, _PAIR, {}, "reduction", t.Reduction),
    (
        jp.sparse_kl_divergence,
        (_LOGP, _IDS, _LOGP[:, :1]),
        {},
        "direction",
        t.Direction,
    ),
    (jp.sparse_kl_divergence, (_LOGP, _IDS, _LOGP[:, :1]), {}, "tail", t.Tail),
    (jp.sparse_js_divergence, (_LOGP, _IDS, _LOGP[:, :1]), {}, "tail", t.Tail),
    (
        jp.sparse_js_divergence,
        (_LOGP, _IDS, _LOGP[:, :1]),
        {},
        "reduction",
        t.Reduction,
    ),
    (jp.fused_linear_kl_divergence, (_X,) * 4, {}, "direction", t.Direction),
    (jp.fused_linear_kl_divergence, (_X,) * 4, {}, "reduction", t.Reduction),
    (jp.fused_linear_js_divergence, (_X,) * 4, {}, "reduction", t.Reduction),
    (jp.fused_linear_sparse_kl_divergence, _SPARSE_HEAD, {}, "tail", t.Tail),
    (jp.fused_linear_sparse_kl_divergence, _SPARSE_HEAD, {}, "direction", t.Direction),
    (jp.fused_linear_sparse_js_divergence, _SPARSE_HEAD, {}, "reduction", t.Reduction),
]
_PARAMS = [
    pytest.param(*entry, id=f"{entry[0].__name__}-{entry[3]}") for entry in OPTIONS
]


@pytest.mark.parametrize("fn, args, kwargs, option, alias", _PARAMS)
def test_runtime_check_lists_the_alias_values(fn, args, kwargs, option, alias):
    # check_option's message prints the tuple of values it accepts: it must be
    # exactly the alias's values, in its order.
    valid = typing.get_args(alias)
    with pytest.raises(ValueError, match=f"`{option}`") as info:
        fn(*args, **kwargs, **{option: "no-such-option"})
    assert f"one of {valid!r}" in str(info.value)


@pytest.mark.parametrize("fn, args, kwargs, option, alias", _PARAMS)
def test_signature_uses_the_alias(fn, args, kwargs, option, alias):
    del args, kwargs
    assert typing.get_type_hints(fn)[option] == alias
