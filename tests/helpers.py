"""Helpers shared by the test modules: compile counting, random heads and
log-probabilities, float64 references and finite-difference gradient checks."""

import contextlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from jax.test_util import check_grads

# ---------------------------------------------------------------------------
# Compilations
# ---------------------------------------------------------------------------

_COMPILES: list[str] = []
_LISTENING = False


def _on_event(name, duration, **kwargs):
    del duration, kwargs
    if name == "/jax/core/compile/backend_compile_duration":
        _COMPILES.append(name)


@contextlib.contextmanager
def count_compiles():
    """Counts real XLA compilations (backend compiles, through jax.monitoring).

    Yields a callable returning the number of compilations so far inside.
    """
    global _LISTENING
    if not _LISTENING:
        jax.monitoring.register_event_duration_secs_listener(_on_event)
        _LISTENING = True
    start = len(_COMPILES)
    yield lambda: len(_COMPILES) - start


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def random_heads(positions, h, hr, v, *, seed=0, dtype=jnp.float32, logit_std=None):
    """Hidden states and head kernels of a student and a reference model.

    Returns ``(x [*positions, h], w [h, v], rx [*positions, hr], rw [hr, v])``
    drawn from a standard normal in that order. With ``logit_std`` the kernels
    are scaled so that the logits ``x @ w`` have about that standard deviation.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=tuple(positions) + (h,))
    w = rng.normal(size=(h, v))
    rx = rng.normal(size=tuple(positions) + (hr,))
    rw = rng.normal(size=(hr, v))
    if logit_std is not None:
        w, rw = w * logit_std / np.sqrt(h), rw * logit_std / np.sqrt(hr)
    return tuple(jnp.asarray(a, dtype) for a in (x, w, rx, rw))


def materialised(fn, x, w, rx, rw, **kwargs):
    """The plain divergence ``fn`` on fully materialised log-softmax logits."""
    return fn(jax.nn.log_softmax(x @ w), jax.nn.log_softmax(rx @ rw), **kwargs)


def position_weighted_sum(values):
    """``Σ_i i · values_i`` (i = 1, 2, ...): a scalar whose cotangent differs
    at every position, so a per-position result is checked position by position."""
    weights = jnp.arange(1, values.size + 1, dtype=values.dtype)
    return jnp.sum(weights.reshape(values.shape) * values)


def log_softmax32(x):
    """float32 log-softmax of NumPy logits, back as NumPy."""
    return np.asarray(jax.nn.log_softmax(jnp.asarray(x, jnp.float32)))


# ---------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------


def np_log(p):
    """log p in NumPy, with log 0 = -inf and no warning."""
    with np.errstate(divide="ignore"):
        return np.log(p)


def ref_kl(p, q):
    """KL(P‖Q) per row, SciPy float64 (rel_entr: 0 log 0 = 0, p log(p/0) = inf)."""
    return scipy.special.rel_entr(p, q).sum(-1)


def ref_js(p, q, beta=0.5):
    """β-skewed Jensen–Shannon per row: β KL(P‖M) + (1−β) KL(Q‖M), M = βP + (1−β)Q."""
    m = beta * p + (1 - beta) * q
    return beta * ref_kl(p, m) + (1 - beta) * ref_kl(q, m)


# ---------------------------------------------------------------------------
# Assertions
# ---------------------------------------------------------------------------


def assert_grads_match_finite_differences(f, args, tol, eps=None):
    """Reverse-mode gradients of ``f`` at ``args`` equal central finite
    differences (``jax.test_util.check_grads``) to ``atol = rtol = tol``."""
    check_grads(f, args, order=1, modes=["rev"], atol=tol, rtol=tol, eps=eps)


def close(actual, desired, rtol=1e-12, atol=0.0):
    """assert_allclose, with ``atol`` also per element (an array)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    if np.ndim(atol) == 0:
        np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol)
        return
    bad = ~(np.abs(actual - desired) <= atol + rtol * np.abs(desired))
    assert not bad.any(), (
        f"{actual[bad]} != {desired[bad]} (rtol {rtol}, atol {np.asarray(atol)[bad]})"
    )


def assert_trees_close(got, want, rtol=1e-7, atol=0.0):
    """Same tree structure and leaf shapes; leaves allclose (NumPy's default
    tolerances unless given)."""
    chex.assert_trees_all_equal_structs(got, want)
    chex.assert_trees_all_equal_shapes(got, want)
    chex.assert_trees_all_close(got, want, rtol=rtol, atol=atol)
