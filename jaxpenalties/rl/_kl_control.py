"""The KL coefficient of an RL fine-tuning step: controllers and KL in the reward.

A controller is pure state, optax style: ``controller.init()`` gives the state,
``controller.update(state, observed_kl, n_steps)`` the next one, and
``state.coef`` is the β to use. It runs inside ``jax.jit``; feed ``state.coef``
to ``regularize(...)(..., weights={"kl": state.coef})`` and changing β never
recompiles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp

from jaxpenalties._core import checks
from jaxpenalties._core.numerics import weighted
from jaxpenalties._core.types import ArrayLike, Estimator
from jaxpenalties.rl._estimators import kl_estimate


class KLControllerState(NamedTuple):
    """The current KL coefficient β (a float32 scalar)."""

    coef: jax.Array


class KLUpdateFn(Protocol):
    """The signature of :attr:`KLController.update`."""

    def __call__(
        self,
        state: KLControllerState,
        observed_kl: ArrayLike,
        n_steps: ArrayLike = 1,
    ) -> KLControllerState: ...


class KLController(NamedTuple):
    """A KL-coefficient controller: a pair of pure functions ``init() -> state``
    and ``update(state, observed_kl, n_steps=1) -> state``.

    :func:`fixed_kl_controller` and :func:`adaptive_kl_controller` return one.
    The state's ``coef`` is the β to use; ``update`` is jittable and takes the
    state as an argument, so a step that updates β never recompiles. A
    controller of one's own is any ``KLController(init, update)``.

    Example:
      >>> import jax, jaxpenalties as jp
      >>> ctl = jp.adaptive_kl_controller(0.1, target=6.0, horizon=10_000)
      >>> isinstance(ctl, jp.KLController)
      True
      >>> state = jax.jit(ctl.update)(ctl.init(), 9.0, 256)
      >>> print(f"{state.coef:.5f}")
      0.10051
    """

    #: ``init()`` returns the initial state; its ``coef`` is the initial β.
    init: Callable[[], KLControllerState]
    #: ``update(state, observed_kl, n_steps=1)`` returns the next state.
    update: KLUpdateFn


def fixed_kl_controller(coef: ArrayLike) -> KLController:
    """A constant KL coefficient, with the controller interface.

    Example:
      >>> import jaxpenalties as jp
      >>> ctl = jp.fixed_kl_controller(0.05)
      >>> state = ctl.update(ctl.init(), observed_kl=3.0)
      >>> print(f"{state.coef:.2f}")
      0.05
    """
    coef = checks.check_scalar("coef", coef, low=0.0)

    def init() -> KLControllerState:
        return KLControllerState(jnp.asarray(coef, jnp.float32))

    def update(
        state: KLControllerState, observed_kl: ArrayLike, n_steps: ArrayLike = 1
    ) -> KLControllerState:
        del observed_kl, n_steps
        return state

    return KLController(init, update)


def adaptive_kl_controller(
    init_coef: ArrayLike,
    target: ArrayLike,
    horizon: ArrayLike,
    *,
    max_error: float = 0.2,
) -> KLController:
    r"""Adaptive KL coefficient (Ziegler et al., 2019), as in TRL and verl.

    .. math::

        e = \mathrm{clip}\Big(\frac{\mathrm{KL}}{\mathrm{target}} - 1,
            -e_{max}, e_{max}\Big), \qquad
        \beta \leftarrow \beta \max\Big(0,\;
            1 + e \, \frac{n_{steps}}{\mathrm{horizon}}\Big)

    β grows while the observed KL is above the target and shrinks below it,
    by at most ``max_error · n_steps / horizon`` per update.

    The multiplier is floored at 0, so β never turns negative (a negative β
    would reward the KL). TRL's update has no floor: its multiplier
    1 − e_max · n_steps / horizon is negative once ``n_steps > horizon /
    max_error`` (500 steps for horizon 100) with the KL far below target.
    Where TRL's β stays positive the numbers are TRL's exactly; where it would
    cross zero, β = 0, the limit that TRL itself reaches at a multiplier of
    exactly 0. β = 0 is final (a multiplicative update cannot leave it, as with
    ``init_coef=0``): keep ``n_steps · max_error < horizon`` to never reach it.
    A non-finite ``observed_kl`` (NaN or ±inf, e.g. from one bad batch) leaves
    the state unchanged, so it never poisons later steps.

    Args:
      init_coef: the initial β ≥ 0.
      target: the KL to aim for, > 0.
      horizon: how many steps (samples, in TRL) a full correction takes, > 0.
      max_error: the clip on the proportional error (0.2 in the paper).

    Returns:
      A :class:`KLController`; its ``update`` is jittable.

    Example:
      >>> import jaxpenalties as jp
      >>> ctl = jp.adaptive_kl_controller(0.1, target=6.0, horizon=10_000)
      >>> state = ctl.update(ctl.init(), observed_kl=9.0, n_steps=256)
      >>> print(f"{state.coef:.5f}")  # 0.1 · (1 + 0.2 · 256 / 10000)
      0.10051

    References:
      Ziegler et al., Fine-Tuning Language Models from Human Preferences, 2019.
    """
    init_coef = checks.check_scalar("init_coef", init_coef, low=0.0)
    target = checks.check_scalar("target", target, low=0.0, open_low=True)
    horizon = checks.check_scalar("horizon", horizon, low=0.0, open_low=True)
    max_error = checks.check_scalar("max_error", max_error, low=0.0, open_low=True)

    def init() -> KLControllerState:
        return KLControllerState(jnp.asarray(init_coef, jnp.float32))

    def update(
        state: KLControllerState, observed_kl: ArrayLike, n_steps: ArrayLike = 1
    ) -> KLControllerState:
        kl = jnp.asarray(observed_kl, jnp.float32)
        error = jnp.clip(kl / target - 1, -max_error, max_error)
        steps = jnp.asarray(n_steps, jnp.float32)
        multiplier = jnp.maximum(1 + error * steps / horizon, 0)  # β ≥ 0
        coef = (state.coef * multiplier).astype(state.coef.dtype)
        # A NaN or inf observation is skipped: it would stick in β forever.
        return KLControllerState(jnp.where(jnp.isfinite(kl), coef, state.coef))

    return KLController(init, update)


def kl_penalized_rewards(
    rewards: ArrayLike,
    logprobs: ArrayLike,
    ref_logprobs: ArrayLike,
    coef: ArrayLike,
    *,
    estimator: Estimator = "k1",
    max_log_ratio: float | None = None,
    max_value: float | None = None,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Per-token rewards with the KL penalty *in the reward* (PPO-style RLHF).

    .. math::

        \tilde r_t = r_t - \beta \, \mathrm{kl}_t

    with kl_t the per-token estimate of KL(π‖π_ref) (:func:`kl_estimate`, k1 by
    default as in TRL's PPO). Put the KL in the reward when the advantage
    estimator should see it (PPO); put it in the loss with
    :func:`kl_estimate` and ``regularize`` when it should not (GRPO). The
    penalty is a reward: no gradient flows through it (``stop_gradient``).

    ``max_log_ratio`` and ``max_value`` are :func:`kl_estimate`'s clamps, with
    its semantics and defaults (off): log r clamped to [−c, c], then each
    kl_t to [−m, m]. verl's ``low_var_kl`` in the reward (``apply_kl_penalty``:
    scores − β · kl_t) is ``estimator="k3", max_log_ratio=20.0,
    max_value=10.0``. Both may be traced: changing them never recompiles.

    Args:
      rewards: per-token rewards [..., T] (e.g. the score at the last token and
        0 elsewhere).
      logprobs: log π of the sampled tokens, same shape.
      ref_logprobs: log π_ref of the same tokens, same shape.
      coef: β ≥ 0 (e.g. ``state.coef`` of a controller). β = 0, also traced,
        gives exactly the rewards, even where kl_t is inf (a token the
        reference excludes), as a weight of 0 in ``regularize`` does.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"``. Static.
      max_log_ratio: optional positive bound on ``|log r|``, as in
        :func:`kl_estimate` (not static).
      max_value: optional positive bound on each ``|kl_t|``, as in
        :func:`kl_estimate` (not static).
      where: optional mask (nonzero = kept); masked tokens get reward 0.

    Returns:
      float32 per-token rewards of the shape of ``rewards``.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> r = jp.kl_penalized_rewards(jnp.array([0.0, 1.0]),
      ...                             jnp.log(jnp.array([0.5, 0.5])),
      ...                             jnp.log(jnp.array([0.25, 0.5])), coef=0.1)
      >>> print(r)  # k1 = log(0.5 / 0.25) at the first token
      [-0.06931472  1.        ]
    """
    rewards = checks.check_floating("rewards", rewards)
    logprobs = checks.check_floating("logprobs", logprobs)
    checks.check_same_shape("rewards", rewards, "logprobs", logprobs)
    coef = checks.check_scalar("coef", coef, low=0.0)
    # kl_estimate validates the clamps by the shared scalar rule (a traced
    # value stays a dynamic argument of its jitted core).
    kl = kl_estimate(
        logprobs,
        ref_logprobs,
        estimator=estimator,
        max_log_ratio=max_log_ratio,
        max_value=max_value,
        reduction="none",
        where=where,
    )
    # β·kl by regularize's rule: exactly 0 at β = 0, also where kl is inf.
    penalty = weighted(jnp.asarray(coef), jax.lax.stop_gradient(kl), kl.dtype)
    out = rewards.astype(kl.dtype) - penalty
    mask = checks.broadcast_where(where, rewards.shape)
    return out if mask is None else jnp.where(mask, out, jnp.zeros((), out.dtype))
