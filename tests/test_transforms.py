"""Tests for add_penalty_gradient, add_l1_decay and add_elastic_net_decay.

Expected updates are written out by hand in NumPy (sign(p), 2(p − c), ...) or
built from optax's own transforms; training runs check the effect on params.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxpenalties as jp
from tests.helpers import assert_trees_close, count_compiles


@pytest.fixture(scope="module")
def params():
    rng = np.random.default_rng(0)
    return {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "bias": jnp.asarray([0.5, 0.0, -0.25, 1.0], jnp.float32),
        },
        "head": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
    }


def zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def np_tree(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


# ---------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------


class TestValues:
    def test_adds_weight_times_penalty_gradient(self, params):
        def penalty(p):  # Σ p³ over every leaf: gradient 3p²
            return sum(jnp.sum(x**3) for x in jax.tree.leaves(p))

        grads = jax.tree.map(jnp.ones_like, params)
        tx = jp.add_penalty_gradient(penalty, 0.2)
        updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
        expected = jax.tree.map(lambda p: 1.0 + 0.2 * 3 * p**2, np_tree(params))
        assert_trees_close(updates, expected, rtol=1e-6)
        assert isinstance(state, jp.PenaltyGradientState) and state.count == 1

    def test_l1_decay_is_weight_times_sign(self, params):
        tx = jp.add_l1_decay(0.01)
        updates, _ = tx.update(zeros_like(params), tx.init(params), params)
        # np.sign(0) = 0: the zero bias entry is not pushed either way.
        expected = jax.tree.map(lambda p: 0.01 * np.sign(p), np_tree(params))
        assert_trees_close(updates, expected, rtol=1e-6, atol=0)
        assert updates["dense"]["bias"][1] == 0.0

    @pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
    def test_elastic_net_decay_has_the_factor_two(self, params, ratio):
        tx = jp.add_elastic_net_decay(0.1, ratio)
        updates, _ = tx.update(zeros_like(params), tx.init(params), params)
        expected = jax.tree.map(
            lambda p: 0.1 * (ratio * np.sign(p) + 2 * (1 - ratio) * p),
            np_tree(params),
        )
        assert_trees_close(updates, expected, rtol=1e-6, atol=1e-7)

    def test_l2_decay_equals_twice_optax_decayed_weights(self, params):
        # Our L2 is Σp² (gradient 2p); optax adds w·p (gradient of ½Σp²).
        ours = jp.add_penalty_gradient(jp.l2, 0.05)
        theirs = optax.add_decayed_weights(0.1)
        g = zeros_like(params)
        u1, _ = ours.update(g, ours.init(params), params)
        u2, _ = theirs.update(g, theirs.init(params), params)
        assert_trees_close(u1, u2, rtol=1e-6)

    def test_bfloat16_updates_keep_their_dtype(self, params):
        p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
        tx = jp.add_penalty_gradient(jp.l2, optax.constant_schedule(0.1))
        updates, _ = tx.update(zeros_like(p16), tx.init(p16), p16)
        for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(p16), strict=True):
            assert u.dtype == jnp.bfloat16
            np.testing.assert_allclose(
                np.float32(u), 0.2 * np.float32(p), rtol=2e-2, atol=1e-3
            )


# ---------------------------------------------------------------------------
# Composition with optax
# ---------------------------------------------------------------------------


class TestComposition:
    def test_chain_equals_manual_decoupled_update(self, params):
        """AdamW-style: Adam direction + w·∇R, then scaled by −lr; 5 steps."""

        def penalty(p):
            return jp.l2(p) + 0.5 * jp.l1(p)

        lr, w = 0.1, 0.01
        tx = optax.chain(
            optax.scale_by_adam(),
            jp.add_penalty_gradient(penalty, w),
            optax.scale_by_learning_rate(lr),
        )
        adam = optax.scale_by_adam()

        def task_grads(p, i):
            return jax.tree.map(lambda x: jnp.cos(x + i), p)

        @jax.jit
        def step(p, state, i):
            # optax's Adam computes `decay ** count` (a Python float to an int32
            # power), which strict promotion rejects: standard for optax only.
            with jax.numpy_dtype_promotion("standard"):
                updates, state = tx.update(task_grads(p, i), state, p)
            return optax.apply_updates(p, updates), state

        @jax.jit
        def manual_step(p, adam_state, i):
            with jax.numpy_dtype_promotion("standard"):  # as above
                direction, adam_state = adam.update(task_grads(p, i), adam_state, p)
            new = jax.tree.map(
                lambda x, d: x - lr * (d + w * (2 * x + 0.5 * jnp.sign(x))),
                p,
                direction,
            )
            return new, adam_state

        p1, s1 = params, tx.init(params)
        p2, s2 = params, adam.init(params)
        for i in range(5):
            p1, s1 = step(p1, s1, i)
            p2, s2 = manual_step(p2, s2, i)
        assert_trees_close(p1, p2, rtol=1e-5, atol=1e-6)

    def test_l2_sp_pulls_params_toward_the_reference(self, params):
        pretrained = jax.tree.map(lambda x: x + 1.0, params)
        lr, w = 0.1, 0.5
        tx = optax.chain(
            jp.add_penalty_gradient(functools.partial(jp.l2, center=pretrained), w),
            optax.sgd(lr),
        )
        p, state = params, tx.init(params)
        step = jax.jit(tx.update)
        for _ in range(3):
            # A task gradient of zero: only the penalty acts. Each SGD step
            # maps d = p − c to d − lr·w·2d = (1 − 2·lr·w)·d = 0.9·d.
            updates, state = step(zeros_like(p), state, p)
            p = optax.apply_updates(p, updates)
        distance = jax.tree.map(lambda a, c: np.asarray(a - c), p, pretrained)
        assert_trees_close(
            distance,
            jax.tree.map(lambda x: np.full(x.shape, -(0.9**3)), params),
            rtol=1e-5,
        )

    def test_l2_sp_fights_a_task_gradient(self, params):
        """SGD on a task pulling every weight toward 3: with L2-SP the params
        settle between the task optimum and the reference."""
        pretrained = zeros_like(params)

        def run(w):
            tx = optax.chain(
                jp.add_penalty_gradient(functools.partial(jp.l2, center=pretrained), w),
                optax.sgd(0.05),
            )

            @jax.jit
            def train(p):
                def body(_, carry):
                    p, s = carry
                    g = jax.tree.map(lambda x: x - 3.0, p)  # ∇ ½‖p − 3‖²
                    u, s = tx.update(g, s, p)
                    return optax.apply_updates(p, u), s

                return jax.lax.fori_loop(0, 300, body, (p, tx.init(p)))[0]

            return train(params)

        free, reg = run(0.0), run(1.0)
        # Stationary points: p = 3 without the penalty; p − 3 + 2w·p = 0, i.e.
        # p = 3 / (1 + 2w) = 1 with w = 1.
        assert_trees_close(
            free, jax.tree.map(lambda x: 3.0 * np.ones_like(x), params), atol=1e-3
        )
        assert_trees_close(
            reg, jax.tree.map(lambda x: np.ones_like(x), params), atol=1e-3
        )

    def test_update_without_params_raises(self, params):
        tx = jp.add_l1_decay(0.1)
        with pytest.raises(ValueError, match="needs the params"):
            tx.update(params, tx.init(params))
        chained = optax.chain(optax.sgd(0.1), tx)
        with pytest.raises(ValueError, match="needs the params"):
            chained.update(params, chained.init(params))


# ---------------------------------------------------------------------------
# Masks: optax.masked semantics
# ---------------------------------------------------------------------------


class TestMask:
    @pytest.mark.parametrize(
        "mask",
        [
            {"dense": {"kernel": True, "bias": False}, "head": True},
            {"dense": False, "head": True},  # a prefix of the params tree
            lambda p: jax.tree.map(lambda x: x.ndim > 1, p),  # callable
        ],
        ids=["full-tree", "prefix", "callable"],
    )
    def test_equals_optax_masked(self, params, mask):
        grads = jax.tree.map(jnp.ones_like, params)
        ours = jp.add_l1_decay(0.1, mask=mask)
        theirs = optax.masked(jp.add_l1_decay(0.1), mask)
        u1, _ = ours.update(grads, ours.init(params), params)
        u2, _ = theirs.update(grads, theirs.init(params), params)
        assert_trees_close(u1, u2, rtol=0, atol=0)
        # Leaves where the mask is False pass through unchanged, the others
        # (and only those) moved by 0.1·sign(p) (NumPy).
        changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), u1, grads)
        assert changed != jax.tree.map(lambda _: True, params)
        assert any(jax.tree.leaves(changed))

    def test_mask_with_l2_sp_reference_tree(self, params):
        pretrained = jax.tree.map(lambda x: 2.0 * x, params)
        mask = {"dense": True, "head": False}  # L2-SP on the backbone only
        tx = jp.add_penalty_gradient(
            functools.partial(jp.l2, center=pretrained), 0.1, mask=mask
        )
        g = zeros_like(params)
        updates, _ = tx.update(g, tx.init(params), params)
        # 0.1 · 2(p − 2p) = −0.2p on the backbone; the head untouched.
        expected = {
            "dense": jax.tree.map(lambda p: -0.2 * p, np_tree(params["dense"])),
            "head": np.zeros(4),
        }
        assert_trees_close(updates, expected, rtol=1e-6)

    def test_penalty_sees_the_full_params(self):
        # A penalty that is not a sum over leaves: R = (Σ all entries)².
        # Evaluated on the full params, its gradient on the masked leaf is
        # 2·S with S = 1 − 2 + 4 = 3 (by hand), the unmasked leaf untouched.
        p = {"w": jnp.array([1.0, -2.0]), "v": jnp.array([4.0])}
        tx = jp.add_penalty_gradient(
            lambda t: sum(jnp.sum(x) for x in jax.tree.leaves(t)) ** 2,
            0.5,
            mask={"w": True, "v": False},
        )
        g = {"w": jnp.zeros(2), "v": jnp.array([7.0])}
        updates, _ = tx.update(g, tx.init(p), p)
        np.testing.assert_array_equal(updates["w"], [3.0, 3.0])  # 0.5 · 2 · 3
        np.testing.assert_array_equal(updates["v"], [7.0])

    def test_bad_mask(self, params):
        tx = jp.add_l1_decay(0.1, mask={"other": True})
        with pytest.raises(ValueError, match="as in optax.masked"):
            tx.update(params, tx.init(params), params)


# ---------------------------------------------------------------------------
# Schedules and inject_hyperparams
# ---------------------------------------------------------------------------


class TestSchedules:
    def test_schedule_on_the_count(self):
        schedule = optax.linear_schedule(0.0, 1.0, transition_steps=4)
        p = jnp.array([2.0, -3.0])
        tx = jp.add_penalty_gradient(jp.l2, schedule)
        state = tx.init(p)
        step = jax.jit(tx.update)
        for k in range(6):
            updates, state = step(jnp.zeros(2), state, p)
            w = min(k, 4) / 4  # the schedule at count k, by hand
            np.testing.assert_allclose(updates, w * 2 * np.array([2.0, -3.0]))
            assert state.count == k + 1

    def test_inject_hyperparams_weight(self, params):
        factory = optax.inject_hyperparams(
            jp.add_penalty_gradient, static_args=("penalty_fn",)
        )
        tx = factory(penalty_fn=jp.l1, weight=0.1)
        state = tx.init(params)
        assert set(state.hyperparams) == {"weight"}
        step = jax.jit(tx.update)
        g = zeros_like(params)
        updates, state = step(g, state, params)  # compiles once
        assert_trees_close(
            updates, jax.tree.map(lambda p: 0.1 * np.sign(p), np_tree(params))
        )
        with count_compiles() as compiles:
            for w in (0.7, 0.0, 2.5):
                state.hyperparams["weight"] = jnp.asarray(w, jnp.float32)
                updates, state = step(g, state, params)
                expected = jax.tree.map(np.sign, np_tree(params))
                assert_trees_close(
                    updates, jax.tree.map(lambda e, w=w: w * e, expected)
                )
            assert compiles() == 0

    def test_inject_hyperparams_schedule_and_mask(self, params):
        factory = optax.inject_hyperparams(
            jp.add_penalty_gradient, static_args=("penalty_fn", "mask")
        )
        schedule = optax.linear_schedule(0.0, 1.0, transition_steps=2)
        tx = factory(
            penalty_fn=jp.l1,
            weight=schedule,
            mask=lambda p: {"dense": {"kernel": True, "bias": False}, "head": False},
        )
        state = tx.init(params)
        g = zeros_like(params)
        for k in range(3):
            updates, state = tx.update(g, state, params)
            w = min(k, 2) / 2
            expected = jax.tree.map(np.zeros_like, np_tree(params))
            expected["dense"]["kernel"] = w * np.sign(
                np_tree(params)["dense"]["kernel"]
            )
            assert_trees_close(updates, expected, rtol=1e-6)

    def test_inject_hyperparams_l1_and_elastic_net_directly(self, params):
        g = zeros_like(params)
        l1 = optax.inject_hyperparams(jp.add_l1_decay)(weight=0.1)
        u, _ = l1.update(g, l1.init(params), params)
        assert_trees_close(u, jax.tree.map(lambda p: 0.1 * np.sign(p), np_tree(params)))

        en = optax.inject_hyperparams(jp.add_elastic_net_decay)(
            weight=0.1, l1_ratio=0.5
        )
        state = en.init(params)
        assert set(state.hyperparams) == {"weight", "l1_ratio"}
        state.hyperparams["l1_ratio"] = jnp.asarray(0.25)
        u, _ = jax.jit(en.update)(g, state, params)
        expected = jax.tree.map(
            lambda p: 0.1 * (0.25 * np.sign(p) + 1.5 * p), np_tree(params)
        )
        assert_trees_close(u, expected, rtol=1e-5, atol=1e-7)

    def test_inject_hyperparams_without_static_args_explains(self, params):
        factory = optax.inject_hyperparams(jp.add_penalty_gradient)
        # inject_hyperparams takes the penalty for a schedule and passes its
        # value at count 0 (an array) as `penalty_fn`: the error says why.
        tx = factory(penalty_fn=jp.l2, weight=0.1)
        with pytest.raises(TypeError, match="floating-point"):
            tx.init(params)  # jp.l2 refuses the integer count itself
        tx = factory(penalty_fn=lambda p: jnp.sum(jnp.square(p)), weight=0.1)
        with pytest.raises(TypeError, match=r"static_args=\('penalty_fn',\)"):
            tx.init(params)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


class TestErrors:
    def test_construction(self):
        with pytest.raises(TypeError, match="`penalty_fn` to be callable"):
            jp.add_penalty_gradient(0.1)
        with pytest.raises(ValueError, match=r"`weight` to be a finite number >= 0"):
            jp.add_penalty_gradient(jp.l1, -0.1)
        with pytest.raises(ValueError, match="`weight` to be a number"):
            jp.add_l1_decay("0.1")
        with pytest.raises(ValueError, match=r"`weight` to be a scalar"):
            jp.add_l1_decay(jnp.ones(2))
        with pytest.raises(ValueError, match=r"`l1_ratio` to be in \[0, 1\]"):
            jp.add_elastic_net_decay(0.1, 1.5)


@jax.tree_util.register_pytree_node_class
class _CallableMask:
    """A callable pytree of booleans, as an equinox Module used as a mask."""

    def __init__(self, w, b):
        self.w, self.b = w, b

    def __call__(self, x):  # a model's forward pass, not a mask function
        raise AssertionError("the mask must not be called")

    def tree_flatten(self):
        return (self.w, self.b), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


def test_a_callable_pytree_mask_is_a_mask_tree_as_in_optax():
    params = _CallableMask(jnp.ones(3), jnp.ones(2))
    mask = _CallableMask(True, False)
    tx = jp.add_penalty_gradient(jp.l2, 0.5, mask=mask)
    updates, _ = tx.update(
        jax.tree.map(jnp.zeros_like, params), tx.init(params), params
    )
    np.testing.assert_allclose(updates.w, 0.5 * 2 * np.ones(3))
    np.testing.assert_array_equal(updates.b, 0.0)


def test_l2_sp_decay_keeps_the_centre_in_the_state_and_matches_the_closure():
    rng = np.random.default_rng(0)
    params = {
        "a": jnp.asarray(rng.normal(size=(3, 2))),
        "b": jnp.asarray(rng.normal(size=4)),
    }
    center = jax.tree.map(lambda x: x + 0.5, params)
    updates = jax.tree.map(jnp.ones_like, params)
    ours = jp.add_l2_sp_decay(0.3, center, mask={"a": True, "b": False})
    closure = jp.add_penalty_gradient(
        functools.partial(jp.l2, center=center), 0.3, mask={"a": True, "b": False}
    )
    state = ours.init(params)
    got, state = jax.jit(ours.update)(updates, state, params)
    want, _ = closure.update(updates, closure.init(params), params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)
    np.testing.assert_allclose(got["a"], 1 + 0.3 * 2 * (-0.5))
    assert int(state.count) == 1 and state.center is not None
    with pytest.raises(ValueError, match="structure"):
        jp.add_l2_sp_decay(0.1, {"a": center["a"]}).init(params)


# ---------------------------------------------------------------------------
# Every path holds: bf16 params, integer leaves, donated params and state
# ---------------------------------------------------------------------------

_WEIGHTS = {
    "schedule": optax.linear_schedule(0.25, 0.5, 4),  # float32 arrays
    "float32 array": jnp.asarray(0.25, jnp.float32),
    "bfloat16 array": jnp.asarray(0.25, jnp.bfloat16),
}


@pytest.mark.parametrize("kind", _WEIGHTS)
def test_bfloat16_params_with_a_schedule_or_an_array_weight(params, kind):
    # Under the suite's strict dtype promotion; the expected updates come from
    # the bf16 values in float64: u + 0.25 · 2 (p − c), rounded to bf16 once.
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    c16 = jax.tree.map(lambda x: (x + 0.5).astype(jnp.bfloat16), params)
    u16 = jax.tree.map(lambda x: jnp.full(x.shape, 0.125, jnp.bfloat16), params)
    weight = _WEIGHTS[kind]
    for tx in (
        jp.add_l2_sp_decay(weight, c16),
        jp.add_penalty_gradient(functools.partial(jp.l2, center=c16), weight),
    ):
        updates, _ = jax.jit(tx.update)(u16, tx.init(p16), p16)
        want = jax.tree.map(
            lambda p, c: 0.125 + 0.25 * 2 * (np_tree(p) - np_tree(c)), p16, c16
        )
        for got, w in zip(jax.tree.leaves(updates), jax.tree.leaves(want), strict=True):
            assert got.dtype == jnp.bfloat16
            np.testing.assert_allclose(np.float64(got), w, rtol=1e-2, atol=1e-2)


def test_integer_leaves_pass_through_unchanged():
    # An int step counter among the params (as some model states hold): no
    # gradient exists for it; the float leaves get theirs, the int leaf its update.
    params = {"w": jnp.asarray([1.0, -2.0]), "step": jnp.asarray(3, jnp.int32)}
    updates = {"w": jnp.zeros(2), "step": jnp.asarray(0, jnp.int32)}
    center = {"w": jnp.asarray([0.5, 0.5]), "step": jnp.asarray(0, jnp.int32)}
    tx = jp.add_penalty_gradient(lambda p: jnp.sum(p["w"] ** 2), 0.1)
    got, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    np.testing.assert_allclose(got["w"], [0.2, -0.4], rtol=1e-6)  # 0.1 · 2w
    assert got["step"] == 0 and got["step"].dtype == jnp.int32
    tx = jp.add_l2_sp_decay(0.1, center)
    got, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    np.testing.assert_allclose(got["w"], [0.1, -0.5], rtol=1e-6)  # 0.1 · 2(w − c)
    assert got["step"] == 0 and got["step"].dtype == jnp.int32
    # The parameter penalties skip it too (one rule: floating leaves only).
    tx = jp.add_penalty_gradient(jp.l2, 0.1)
    got, _ = tx.update(updates, tx.init(params), params)
    np.testing.assert_allclose(got["w"], [0.2, -0.4], rtol=1e-6)  # 0.1 · 2w
    assert got["step"] == 0 and got["step"].dtype == jnp.int32


def test_l2_sp_state_owns_its_centre_so_params_and_state_can_be_donated():
    # Fine-tuning starts at the centre, and the step donates params and state
    # (what users do at scale). Before, params *being* the centre made XLA
    # "donate the same buffer twice", and donating the state deleted the
    # caller's centre.
    def run(start_from_a_copy):
        center = {"a": jnp.asarray([1.0, -2.0]), "b": jnp.asarray([[0.5, 0.25]])}
        params = jax.tree.map(jnp.copy, center) if start_from_a_copy else center
        tx = optax.chain(jp.add_l2_sp_decay(0.5, center=center), optax.scale(-0.1))
        state = tx.init(params)
        leaves = zip(
            jax.tree.leaves(state[0].center), jax.tree.leaves(params), strict=True
        )
        for c, p in leaves:
            assert c.unsafe_buffer_pointer() != p.unsafe_buffer_pointer()
        grads = jax.tree.map(jnp.ones_like, params)

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def step(params, state):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        ref = c = np_tree(center)
        for _ in range(3):
            params, state = step(params, state)
            # p ← p − 0.1 (1 + 0.5 · 2 (p − c)), by hand in float64
            ref = jax.tree.map(lambda p, c: p - 0.1 * (1 + (p - c)), ref, c)
        assert_trees_close(params, ref, rtol=1e-6)
        assert_trees_close(state[0].center, c, rtol=0)
        return center

    run(start_from_a_copy=False)  # the caller donated its own centre: fine
    center = run(start_from_a_copy=True)
    # Donating the optimiser state did not delete the caller's centre.
    assert not any(x.is_deleted() for x in jax.tree.leaves(center))
