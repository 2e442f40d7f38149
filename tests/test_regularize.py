"""Tests for Penalty and regularize.

Every expected value comes from a hand-written regularised loss (plain JAX,
differentiated by jax.grad independently of `regularize`), from NumPy float64,
or from a real training run; nothing is read back from the code under test.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxpenalties as jp
from tests.helpers import count_compiles

# ---------------------------------------------------------------------------
# A tiny classifier shared by the tests: x [B, D] -> hidden [B, H] -> logprobs.
# ---------------------------------------------------------------------------

B, D, H, V = 6, 5, 7, 4


def init_params(seed, d=D, h=H, v=V):
    rng = np.random.default_rng(seed)
    return {
        "w1": jnp.asarray(rng.normal(size=(d, h)) / np.sqrt(d), jnp.float32),
        "b1": jnp.zeros((h,)),
        "w2": jnp.asarray(rng.normal(size=(h, v)) / np.sqrt(h), jnp.float32),
        "b2": jnp.zeros((v,)),
    }


def forward(params, x):
    hidden = jnp.tanh(x @ params["w1"] + params["b1"][None, :])
    return hidden, jax.nn.log_softmax(hidden @ params["w2"] + params["b2"][None, :])


def nll(logprobs, y):
    return -jnp.mean(jnp.take_along_axis(logprobs, y[:, None], axis=-1))


def loss_fn(params, batch):
    hidden, logprobs = forward(params, batch["x"])
    return nll(logprobs, batch["y"]), {"logprobs": logprobs, "hidden": hidden}


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    params, base = init_params(1), init_params(2)  # base: a frozen "base model"
    x = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
    ref = jax.nn.log_softmax(jnp.asarray(2.0 * rng.normal(size=(B, V)), jnp.float32))
    batch = {
        "x": x,
        "y": jnp.asarray(rng.integers(0, V, size=B)),
        "ref_logprobs": ref,
        "mask": jnp.array([True, True, False, True, False, True]),
        "base_logprobs": forward(base, x)[1],
    }
    return params, base, batch


def penalty_with_metrics(hidden, *, scale):
    """Activity penalty returning (value, metrics): scale · mean(h²)."""
    value = scale * jnp.mean(hidden**2)
    return value, {"max_abs": jnp.max(jnp.abs(hidden))}


def make_penalties(pretrained):
    return [
        jp.Penalty(jp.kl_divergence, inputs=("logprobs", "ref_logprobs"), weight=0.3),
        jp.Penalty(
            jp.entropy,
            inputs=("logprobs",),
            weight=0.05,
            kwargs={"mode": "penalty"},
            where="mask",
        ),
        jp.Penalty(
            functools.partial(jp.l2, center=pretrained),
            inputs=("params",),
            weight=1e-2,
            name="l2_sp",
        ),
        jp.Penalty(
            penalty_with_metrics,
            inputs=("hidden",),
            weight=optax.linear_schedule(0.0, 1.0, transition_steps=10),
            kwargs={"scale": 2.0},
            name="activity",
        ),
    ]


def hand_written(params, batch, pretrained, step):
    """The same regularised loss written out by hand."""
    hidden, logprobs = forward(params, batch["x"])
    p, q = jnp.exp(logprobs), jnp.exp(batch["ref_logprobs"])
    kl = jnp.mean(jnp.sum(p * (logprobs - batch["ref_logprobs"]), -1))
    del q
    ent_rows = -jnp.sum(p * logprobs, -1)
    m = batch["mask"]
    ent = jnp.sum(jnp.where(m, ent_rows, 0.0)) / jnp.sum(m, dtype=ent_rows.dtype)
    l2sp = sum(jnp.sum((params[k] - pretrained[k]) ** 2) for k in sorted(params))
    activity = 2.0 * jnp.mean(hidden**2)
    w_act = step / 10.0
    return (
        nll(logprobs, batch["y"])
        + 0.3 * kl
        + 0.05 * ent
        + 1e-2 * l2sp
        + w_act * activity
    )


# ---------------------------------------------------------------------------
# Values and gradients
# ---------------------------------------------------------------------------


hand_vg = jax.jit(jax.value_and_grad(hand_written))


class TestTotalAndGradients:
    def test_matches_hand_written_loss(self, setup):
        params, base, batch = setup
        f = jp.regularize(loss_fn, make_penalties(base))
        vg = jax.jit(jax.value_and_grad(f, has_aux=True))
        for step in (0, 4, 25):  # schedule: 0, 0.4, then clamped at 1.0
            (total, aux), grads = vg(params, batch, step=step)
            ref_total, ref_grads = hand_vg(params, batch, base, min(step, 10))
            np.testing.assert_allclose(total, ref_total, rtol=1e-5)
            for k in params:
                np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6)
            # aux: the loss and every term's value, weight, contribution.
            np.testing.assert_allclose(
                aux["loss"], nll(forward(params, batch["x"])[1], batch["y"])
            )
            pen = aux["penalties"]
            assert set(pen) == {"kl_divergence", "entropy", "l2_sp", "activity"}
            np.testing.assert_allclose(pen["activity"]["weight"], min(step, 10) / 10)
            for entry in pen.values():
                np.testing.assert_allclose(
                    entry["contribution"], entry["weight"] * entry["value"], rtol=1e-6
                )
            contributions = sum(e["contribution"] for e in pen.values())
            np.testing.assert_allclose(total, aux["loss"] + contributions, rtol=1e-6)

    def test_aux_structure_and_metrics(self, setup):
        params, base, batch = setup
        f = jax.jit(jp.regularize(loss_fn, make_penalties(base)))
        total, aux = f(params, batch, step=3)
        # Outputs only when asked for: they can be [B, T, V] arrays.
        assert set(aux) == {"loss", "penalties"}
        g = jax.jit(jp.regularize(loss_fn, make_penalties(base), return_outputs=True))
        assert set(g(params, batch, step=3)[1]["outputs"]) == {"logprobs", "hidden"}
        act = aux["penalties"]["activity"]
        assert set(act) == {"value", "weight", "contribution", "max_abs"}
        hidden = forward(params, batch["x"])[0]
        np.testing.assert_allclose(act["max_abs"], np.max(np.abs(hidden)), rtol=1e-6)
        np.testing.assert_allclose(act["value"], 2.0 * np.mean(hidden**2), rtol=1e-5)
        for leaf in jax.tree.leaves(aux):
            assert isinstance(leaf, jax.Array)
        assert total.dtype == jnp.float32

    def test_scalar_loss_without_outputs_and_extra_args(self, setup):
        params, _, batch = setup

        def loss_with_key(params, batch, key, temperature):
            noise = 0.01 * jax.random.normal(key, batch["x"].shape)
            logprobs = forward(params, batch["x"] + noise)[1]
            return nll(logprobs, batch["y"]) / temperature

        f = jp.regularize(
            loss_with_key, [jp.Penalty(jp.l1, inputs=("params",), weight=1e-3)]
        )
        key = jax.random.key(3)
        total, aux = jax.jit(f)(params, batch, key, 2.0)
        expected = loss_with_key(params, batch, key, 2.0) + 1e-3 * sum(
            jnp.sum(jnp.abs(v)) for v in params.values()
        )
        np.testing.assert_allclose(total, expected, rtol=1e-6)
        assert "outputs" not in aux

    def test_no_penalties_is_the_loss(self, setup):
        params, _, batch = setup
        (total, aux), grads = jax.jit(
            jax.value_and_grad(jp.regularize(loss_fn, []), has_aux=True)
        )(params, batch)
        ref, ref_grads = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, batch)[0]))(
            params
        )
        np.testing.assert_allclose(total, ref)
        for k in params:
            np.testing.assert_allclose(grads[k], ref_grads[k])
        assert aux["penalties"] == {}

    @settings(max_examples=30, deadline=None)
    @given(
        w1=st.floats(0.0, 10.0),
        w2=st.floats(0.0, 10.0),
        step=st.integers(0, 1000),
    )
    def test_total_is_loss_plus_weighted_values(self, setup, jitted, w1, w2, step):
        params, _, batch = setup
        f = jitted
        total, aux = f(params, batch, step, {"kl_divergence": w1, "l2_sp": w2})
        pen = aux["penalties"]
        assert pen["kl_divergence"]["weight"] == np.float32(w1)
        assert pen["l2_sp"]["weight"] == np.float32(w2)
        expected = aux["loss"] + sum(
            np.float64(e["weight"]) * np.float64(e["value"]) for e in pen.values()
        )
        np.testing.assert_allclose(total, expected, rtol=1e-5)


@pytest.fixture(scope="module")
def jitted(setup):
    f = jp.regularize(loss_fn, make_penalties(setup[1]))
    return jax.jit(lambda p, b, s, w: f(p, b, step=s, weights=w))


# ---------------------------------------------------------------------------
# The three ways to give a KL penalty its reference
# ---------------------------------------------------------------------------


class TestReferences:
    def test_three_patterns_agree_and_use_the_whole_batch(self, setup):
        params, base, batch = setup
        precomputed = batch["base_logprobs"]

        def loss_with_ref_output(params, batch):
            loss, outputs = loss_fn(params, batch)
            return loss, {**outputs, "ref_field": forward(base, batch["x"])[1]}

        def on_demand(params, batch, outputs):
            del params, outputs
            return forward(base, batch["x"])[1]  # frozen base model

        cases = {
            "batch array": (loss_fn, ("logprobs", "base_logprobs")),
            "named output": (loss_with_ref_output, ("logprobs", "ref_field")),
            "on demand": (loss_fn, ("logprobs", on_demand)),
            "closure": (loss_fn, ("logprobs", lambda p, b, o: precomputed)),
        }
        results = {}
        for label, (lf, inputs) in cases.items():
            f = jp.regularize(lf, [jp.Penalty(jp.kl_divergence, inputs=inputs)])
            (total, aux), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(
                params, batch
            )
            results[label] = (aux["penalties"]["kl_divergence"]["value"], grads)

        # NumPy float64: KL(P‖Q) per example, averaged over the WHOLE batch.
        lp = np.asarray(forward(params, batch["x"])[1], np.float64)
        lq = np.asarray(precomputed, np.float64)
        per_example = np.sum(np.exp(lp) * (lp - lq), -1)
        assert np.ptp(per_example) > 1e-2  # examples differ: the batch matters
        for value, grads in results.values():
            np.testing.assert_allclose(value, per_example.mean(), rtol=1e-5)
            assert not np.isclose(value, per_example[0], rtol=1e-3)
            ref_grads = results["batch array"][1]
            for k in params:
                np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-5, atol=1e-7)

    def test_name_resolution_order(self, setup):
        params, _, batch = setup
        seen = {}

        def record(x, *, tag):
            seen[tag] = x
            return jnp.zeros(())

        def lf(params, batch):
            return jnp.zeros(()), {"x": jnp.ones((2,))}

        penalties = [
            # outputs win over batch for the same name
            jp.Penalty(record, inputs=("x",), kwargs={"tag": "x"}, name="a"),
            jp.Penalty(record, inputs=("y",), kwargs={"tag": "y"}, name="b"),
            jp.Penalty(record, inputs=("params",), kwargs={"tag": "p"}, name="c"),
        ]
        jp.regularize(lf, penalties)(params, batch)
        np.testing.assert_array_equal(seen["x"], np.ones(2))
        np.testing.assert_array_equal(seen["y"], batch["y"])
        assert jax.tree.structure(seen["p"]) == jax.tree.structure(params)

    def test_where_callable_and_kwargs(self, setup):
        params, _, batch = setup

        def where_fn(params, batch, outputs):
            return batch["y"] > 1

        f = jp.regularize(
            loss_fn,
            [
                jp.Penalty(
                    jp.kl_divergence,
                    inputs=("logprobs", "ref_logprobs"),
                    where=where_fn,
                    kwargs={"direction": "reverse", "reduction": "sum"},
                )
            ],
        )
        _, aux = f(params, batch)
        lp = np.asarray(forward(params, batch["x"])[1], np.float64)
        lq = np.asarray(batch["ref_logprobs"], np.float64)
        rows = np.sum(np.exp(lq) * (lq - lp), -1)  # reverse: KL(Q‖P)
        expected = rows[np.asarray(batch["y"]) > 1].sum()
        np.testing.assert_allclose(
            aux["penalties"]["kl_divergence"]["value"], expected, rtol=1e-5
        )


# ---------------------------------------------------------------------------
# Weights: schedules, overrides, 0 switches off; nothing recompiles
# ---------------------------------------------------------------------------


class TestWeights:
    def test_weight_zero_with_infinite_value_contributes_nothing(self):
        # Q puts zero mass where P has mass: KL(P‖Q) = +inf exactly.
        ref = jnp.log(jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        batch = {"ref": ref, "y": jnp.array([0, 1])}

        def lf(params, batch):
            logprobs = jax.nn.log_softmax(params["w"])
            return nll(logprobs, batch["y"]), {"logprobs": logprobs}

        params = {"w": jnp.zeros((2, 3))}
        kl = jp.Penalty(jp.kl_divergence, inputs=("logprobs", "ref"), weight=0.5)
        f = jp.regularize(lf, [kl], track_grad_norms=True)
        vg = jax.jit(jax.value_and_grad(f, has_aux=True))

        (total, aux), grads = vg(params, batch, weights={"kl_divergence": 0.0})
        entry = aux["penalties"]["kl_divergence"]
        assert np.isposinf(entry["value"])  # still computed and reported
        assert entry["contribution"] == 0.0 and entry["grad_norm"] == 0.0
        ref_total, ref_grads = jax.value_and_grad(lambda p: lf(p, batch)[0])(params)
        np.testing.assert_allclose(total, ref_total)
        np.testing.assert_allclose(grads["w"], ref_grads["w"])  # no NaN leaks

        # Switched on again (same compiled step), the true value +inf shows.
        (total, _), _ = vg(params, batch, weights={"kl_divergence": 0.5})
        assert np.isposinf(total)

    def test_overrides_and_schedules_never_recompile(self, setup):
        params, base, batch = setup
        traces = []

        def counted_loss(params, batch):
            traces.append(1)
            return loss_fn(params, batch)

        f = jp.regularize(counted_loss, make_penalties(base))
        opt = optax.adam(1e-2)

        @jax.jit
        def train_step(params, opt_state, batch, step, weights):
            (total, aux), grads = jax.value_and_grad(f, has_aux=True)(
                params, batch, step=step, weights=weights
            )
            # optax.adam computes `decay ** count` (a Python float to an int32
            # power), which strict promotion rejects: standard for optax only.
            with jax.numpy_dtype_promotion("standard"):
                updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, aux

        opt_state = opt.init(params)
        with count_compiles() as compiles:
            for step in range(6):
                weights = {"kl_divergence": 0.1 * step, "entropy": 0.5 / (step + 1)}
                _, opt_state, aux = train_step(params, opt_state, batch, step, weights)
                pen = aux["penalties"]
                np.testing.assert_allclose(pen["kl_divergence"]["weight"], 0.1 * step)
                np.testing.assert_allclose(pen["entropy"]["weight"], 0.5 / (step + 1))
                np.testing.assert_allclose(
                    pen["activity"]["weight"], step / 10, rtol=1e-6
                )
            assert compiles() == 1
        assert len(traces) == 1

    def test_penalty_weight_from_concrete_array(self):
        p = jp.Penalty(jp.l1, inputs=("params",), weight=np.float32(0.25))
        assert p.weight == 0.25 and isinstance(p.weight, float)


# ---------------------------------------------------------------------------
# Gradient norms
# ---------------------------------------------------------------------------


class TestGradNorms:
    def test_grad_norms_match_manual_and_keep_gradient_exact(self, setup):
        params, base, batch = setup
        penalties = make_penalties(base)
        tracked = jp.regularize(loss_fn, penalties, track_grad_norms=True)
        plain = jp.regularize(loss_fn, penalties)
        step = 7
        (t1, aux), g1 = jax.jit(jax.value_and_grad(tracked, has_aux=True))(
            params, batch, step=step
        )
        (t2, _), g2 = jax.jit(jax.value_and_grad(plain, has_aux=True))(
            params, batch, step=step
        )
        np.testing.assert_allclose(t1, t2, rtol=1e-6)
        for k in params:
            np.testing.assert_allclose(g1[k], g2[k], rtol=1e-5, atol=1e-7)

        # Manual: jax.grad of weight · value, one term at a time, by hand.
        def kl_term(p):
            lp = forward(p, batch["x"])[1]
            return 0.3 * jp.kl_divergence(lp, batch["ref_logprobs"])

        def l2sp_term(p):
            return 1e-2 * sum(jnp.sum((p[k] - base[k]) ** 2) for k in p)

        def activity_term(p):
            return (step / 10) * 2.0 * jnp.mean(forward(p, batch["x"])[0] ** 2)

        def norm(tree):
            return np.sqrt(sum(np.sum(np.square(v)) for v in jax.tree.leaves(tree)))

        pen = aux["penalties"]
        for name, term in [
            ("kl_divergence", kl_term),
            ("l2_sp", l2sp_term),
            ("activity", activity_term),
        ]:
            expected = norm(jax.jit(jax.grad(term))(params))
            assert expected > 1e-4
            np.testing.assert_allclose(pen[name]["grad_norm"], expected, rtol=1e-4)


# ---------------------------------------------------------------------------
# Real training: a KL-to-base penalty keeps a fine-tuned model near its base
# ---------------------------------------------------------------------------


def test_kl_to_base_keeps_finetuned_model_close():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x_all = jnp.asarray(digits.data / 16.0, jnp.float32)
    y_all = jnp.asarray(digits.target)
    x_train, y_train = x_all[:1000], y_all[:1000]
    x_test, y_test = x_all[1000:1400], y_all[1000:1400]

    def clf_loss(params, batch):
        _, logprobs = forward(params, batch["x"])
        return nll(logprobs, batch["y"]), {"logprobs": logprobs}

    def trainer(f, steps):
        """A jitted loop of `steps` Adam steps on the regularised loss `f`."""
        opt = optax.adam(1e-2)

        @jax.jit
        def train(params, batch, weights):
            def step(carry, _):
                params, opt_state = carry
                grads, _ = jax.grad(f, has_aux=True)(params, batch, weights=weights)
                with jax.numpy_dtype_promotion("standard"):  # optax.adam's decay**count
                    updates, opt_state = opt.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), None

            carry = (params, opt.init(params))
            return jax.lax.scan(step, carry, None, length=steps)[0][0]

        return train

    @jax.jit
    def evaluate(params, base):
        logprobs, base_logprobs = forward(params, x_test)[1], forward(base, x_test)[1]
        kl_to_base = jp.kl_divergence(logprobs, base_logprobs)  # KL(P_ft‖P_base)
        accuracy = jnp.mean(jnp.argmax(logprobs, -1) == y_test)
        return kl_to_base, accuracy, nll(logprobs, (y_test + 1) % 10)

    init = init_params(42, d=64, h=32, v=10)
    base = trainer(jp.regularize(clf_loss, []), 200)(
        init, {"x": x_train, "y": y_train}, {}
    )
    _, base_acc, base_new_nll = evaluate(base, base)
    assert base_acc > 0.85  # the base model really learned the digits

    def base_logprobs(params, batch, outputs):
        del params, outputs
        return forward(base, batch["x"])[1]  # frozen base model, on demand

    kl = jp.Penalty(jp.kl_divergence, inputs=("logprobs", base_logprobs), name="kl")
    finetune = trainer(jp.regularize(clf_loss, [kl]), 100)
    new_task = {"x": x_train, "y": (y_train + 1) % 10}  # relabelled digits
    with count_compiles() as compiles:
        free = finetune(base, new_task, {"kl": 0.0})
        reg = finetune(base, new_task, {"kl": 1.0})
        assert compiles() == 1  # the weight change did not recompile

    kl_free, _, free_new_nll = evaluate(free, base)
    kl_reg, _, reg_new_nll = evaluate(reg, base)
    assert kl_free > 1.0  # without the penalty the model drifts far
    assert kl_reg < 0.5 * kl_free
    # ...while both learned the new task (NLL on held-out relabelled digits).
    assert free_new_nll < 0.2 * base_new_nll
    assert reg_new_nll < 0.5 * base_new_nll


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


class TestPenaltySpec:
    def test_name_defaults(self):
        assert jp.Penalty(jp.l1, inputs=("params",)).name == "l1"
        partial = functools.partial(jp.kl_divergence, direction="reverse")
        assert jp.Penalty(partial, inputs=("a", "b")).name == "kl_divergence"
        nested = functools.partial(partial, symmetric=True)
        assert jp.Penalty(nested, inputs=("a", "b")).name == "kl_divergence"

        class Scorer:
            def __call__(self, x):
                return jnp.sum(x)

        assert jp.Penalty(Scorer(), inputs=("x",)).name == "Scorer"

    def test_frozen_and_normalised(self):
        kwargs = {"reduction": "sum"}
        p = jp.Penalty(jp.l1, inputs=["params"], kwargs=kwargs)
        assert p.inputs == ("params",)
        kwargs["reduction"] = "mean"  # the spec kept its own copy
        assert p.kwargs["reduction"] == "sum"
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.weight = 2.0
        with pytest.raises(TypeError):
            p.kwargs["reduction"] = "mean"
        with pytest.raises(TypeError):
            jp.Penalty(jp.l1, ("params",))  # inputs is keyword-only

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            ({"fn": 3, "inputs": ("x",)}, TypeError, "`fn` to be callable"),
            ({"inputs": "logits"}, TypeError, r"inputs=\('logits',\)"),
            ({"inputs": ("x", 3)}, TypeError, "got 3 at position 1"),
            ({"inputs": {"x": 1}}, TypeError, "tuple of names"),
            ({"inputs": ()}, ValueError, "at least one input"),
            ({"inputs": ("x",), "weight": -0.1}, ValueError, ">= 0, got -0.1"),
            ({"inputs": ("x",), "weight": float("nan")}, ValueError, "finite"),
            ({"inputs": ("x",), "weight": float("inf")}, ValueError, "finite"),
            ({"inputs": ("x",), "weight": True}, TypeError, "number >= 0"),
            ({"inputs": ("x",), "weight": "0.1"}, TypeError, "number >= 0"),
            ({"inputs": ("x",), "weight": np.ones(2)}, TypeError, "shape"),
            ({"inputs": ("x",), "name": ""}, TypeError, "non-empty str"),
            ({"inputs": ("x",), "name": 3}, TypeError, "non-empty str"),
            ({"inputs": ("x",), "kwargs": [1]}, TypeError, "`kwargs` to be a dict"),
            ({"inputs": ("x",), "where": 3}, TypeError, "`where` to be None"),
            (
                {"inputs": ("x",), "where": "m", "kwargs": {"where": None}},
                ValueError,
                "both",
            ),
        ],
    )
    def test_construction_errors(self, kwargs, error, match):
        kwargs = {"fn": jp.l1, **kwargs}
        fn = kwargs.pop("fn")
        with pytest.raises(error, match=match):
            jp.Penalty(fn, **kwargs)

    def test_traced_weight_is_refused(self):
        def build(w):
            jp.Penalty(jp.l1, inputs=("params",), weight=w)
            return w

        with pytest.raises(TypeError, match="weights=.*step="):
            jax.jit(build)(0.1)


class TestRegularizeErrors:
    def test_construction_errors(self):
        p = jp.Penalty(jp.l1, inputs=("params",))
        with pytest.raises(ValueError, match=r"duplicates \['l1'\]"):
            jp.regularize(loss_fn, [p, jp.Penalty(jp.l1, inputs=("x",))])
        with pytest.raises(TypeError, match="single Penalty"):
            jp.regularize(loss_fn, p)
        with pytest.raises(TypeError, match="jp.Penalty, got 'l1' at position 1"):
            jp.regularize(loss_fn, [p, "l1"])
        with pytest.raises(TypeError, match="sequence"):
            jp.regularize(loss_fn, {"l1": p})
        with pytest.raises(TypeError, match="`loss_fn` to be callable"):
            jp.regularize(None, [p])
        with pytest.raises(ValueError, match="track_grad_norms"):
            jp.regularize(loss_fn, [p], track_grad_norms=1)

    def test_missing_input_names_itself_and_lists_what_exists(self, setup):
        params, _, batch = setup
        kl = jp.Penalty(jp.kl_divergence, inputs=("logprobs", "ref_lp"), name="kl")
        f = jp.regularize(loss_fn, [kl])
        msg = (
            r"Penalty 'kl': input 'ref_lp' not found\. Available: outputs keys "
            r"\['hidden', 'logprobs'\], batch keys \['base_logprobs', 'mask', "
            r"'ref_logprobs', 'x', 'y'\], and 'params'\."
        )
        with pytest.raises(KeyError, match=msg):
            f(params, batch)
        with pytest.raises(KeyError, match=msg):
            jax.jit(f)(params, batch)
        bad_where = jp.Penalty(
            jp.entropy, inputs=("logprobs",), where="valid", name="ent"
        )
        with pytest.raises(KeyError, match="Penalty 'ent': where 'valid' not found"):
            jp.regularize(loss_fn, [bad_where])(params, batch)

    def test_missing_input_with_non_dict_batch(self, setup):
        params, _, _ = setup

        def lf(params, batch):
            x, y = batch
            return nll(forward(params, x)[1], y)

        f = jp.regularize(lf, [jp.Penalty(jp.l1, inputs=("w",))])
        with pytest.raises(KeyError, match=r"no batch keys \(batch is a tuple"):
            f(params, (jnp.ones((2, D)), jnp.zeros(2, int)))

    def test_call_errors(self, setup):
        params, base, batch = setup
        f = jp.regularize(loss_fn, make_penalties(base))
        with pytest.raises(KeyError, match=r"\['kl'\]; known names are"):
            f(params, batch, weights={"kl": 0.1})
        with pytest.raises(
            ValueError, match=r"weights\['entropy'\]` to be a finite number >= 0"
        ):
            f(params, batch, weights={"entropy": -1.0})
        with pytest.raises(TypeError, match="`weights` to be a dict"):
            f(params, batch, weights=[0.1])
        with pytest.raises(ValueError, match=r"weights\['entropy'\]` to be a scalar"):
            f(params, batch, weights={"entropy": jnp.ones(2)})

        unreduced = jp.Penalty(
            jp.kl_divergence,
            inputs=("logprobs", "ref_logprobs"),
            kwargs={"reduction": "none"},
        )
        with pytest.raises(ValueError, match=r"scalar, got shape \(6,\)"):
            jp.regularize(loss_fn, [unreduced])(params, batch)

        reserved = jp.Penalty(
            lambda x: (jnp.sum(x), {"value": x}), inputs=("x",), name="r"
        )
        with pytest.raises(ValueError, match="'value' is reserved"):
            jp.regularize(loss_fn, [reserved])(params, batch)

        text_metric = jp.Penalty(
            lambda x: (jnp.sum(x), {"direction": "forward"}), inputs=("x",), name="t"
        )
        with pytest.raises(TypeError, match="metric 'direction' must be an array"):
            jp.regularize(loss_fn, [text_metric])(params, batch)

        l1 = [jp.Penalty(jp.l1, inputs=("params",))]
        with pytest.raises(ValueError, match=r"scalar loss, got shape \(6, 4\)"):
            jp.regularize(lambda p, b: forward(p, b["x"])[1], l1)(params, batch)
        with pytest.raises(TypeError, match="tuple of length 3"):
            jp.regularize(lambda p, b: (0.0, {}, {}), l1)(params, batch)
        with pytest.raises(TypeError, match="dict of named arrays"):
            jp.regularize(lambda p, b: (0.0, [1.0]), l1)(params, batch)


def test_flax_nnx_value_and_grad_accepts_the_regularised_loss():
    from flax import nnx

    class Head(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 4, rngs=rngs)

        def __call__(self, x):
            return self.lin(x)

    def nnx_loss(model, batch):
        lp = jax.nn.log_softmax(model(batch["x"]))
        return -jnp.mean(lp[:, 0]), {"lp": lp}

    model = Head(nnx.Rngs(0))
    batch = {"x": jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)))}
    f = jp.regularize(nnx_loss, [jp.Penalty(jp.entropy, inputs=("lp",), weight=0.1)])
    (total, aux), grads = nnx.value_and_grad(f, has_aux=True)(model, batch)
    lp = jax.nn.log_softmax(model(batch["x"]))
    want = -jnp.mean(lp[:, 0]) + 0.1 * jp.entropy(lp)
    np.testing.assert_allclose(total, want, rtol=1e-6)
    assert np.all(np.isfinite(grads["lin"]["kernel"][...]))
