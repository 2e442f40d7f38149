"""The demo (``python -m jaxpenalties.demo``) runs and shows the effect it claims."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxpenalties as jp
from jaxpenalties import demo
from tests.helpers import count_compiles

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_output")
    # The demo trains with optax.adam, which computes `decay ** count` (a Python
    # float to an int32 power): strict promotion rejects it. (A module-scoped
    # fixture runs before the per-test `standard_promotion` marker applies.)
    with jax.numpy_dtype_promotion("standard"):
        outcome = demo.main(["--quick", "--no-progress", "--out", str(out)])
    return out, outcome


def test_writes_a_png_plot_into_out(quick_run):
    out, outcome = quick_run
    path = out / "forgetting.png"
    assert outcome["plot"] == str(path)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000  # three panels of curves, not an empty canvas


def test_prints_the_table_and_the_plot_path(quick_run, capsys):
    # The fixture ran before capsys was active for this test: print again.
    _, outcome = quick_run
    print(demo.format_table(outcome))
    table = capsys.readouterr().out
    for label in ("pre-trained", *demo.SETTINGS):
        assert label in table
    assert len(table.splitlines()) == 3 + len(demo.SETTINGS)


def test_plain_fine_tuning_forgets_the_old_task(quick_run):
    _, outcome = quick_run
    base, plain = outcome["base"], outcome["results"]["fine-tune"]
    assert base["old_acc"] > 0.95 and base["new_acc"] == 0.0
    assert base["kl_to_base"] == pytest.approx(0.0, abs=1e-6)
    assert plain["old_acc"] < 0.1
    assert plain["new_acc"] > 0.9


def test_kl_to_base_keeps_the_old_task(quick_run):
    _, outcome = quick_run
    plain = outcome["results"]["fine-tune"]
    kl = outcome["results"]["+ KL to base"]
    assert kl["kl_to_base"] < 0.25 * plain["kl_to_base"]
    assert kl["old_acc"] > plain["old_acc"] + 0.5
    assert kl["new_acc"] > 0.8  # the new task is still learned


def test_l2_sp_stays_near_the_pretrained_weights(quick_run):
    _, outcome = quick_run
    results = outcome["results"]
    plain, l2sp = results["fine-tune"], results["+ L2-SP"]
    # Read from aux["penalties"]: computed for every setting, even at weight 0.
    l2sp_value = l2sp["penalties"]["l2_sp"]["value"]
    assert l2sp_value < 0.5 * plain["penalties"]["l2_sp"]["value"]
    assert l2sp["old_acc"] > plain["old_acc"] + 0.3
    both = results["+ both"]
    assert both["old_acc"] > plain["old_acc"] + 0.5


def test_reported_penalty_metrics_match_the_weights_used(quick_run):
    _, outcome = quick_run
    for label, r in outcome["results"].items():
        for name, entry in r["penalties"].items():
            want = demo.SETTINGS[label][name]
            assert entry["weight"] == pytest.approx(want)
            assert entry["contribution"] == pytest.approx(want * entry["value"])


def test_history_starts_at_the_base_model_and_ends_at_the_final_numbers(quick_run):
    _, outcome = quick_run
    for r in outcome["results"].values():
        h = r["history"]
        assert h["step"][0] == 0 and h["step"][-1] == 120  # --quick steps
        assert np.all(np.diff(h["step"]) > 0)
        assert h["old_acc"][0] == outcome["base"]["old_acc"]
        assert h["old_acc"][-1] == r["old_acc"]
        assert h["kl_to_base"][-1] == r["kl_to_base"]


@pytest.mark.standard_promotion  # the demo's train step runs optax.adam
def test_changing_penalty_weights_does_not_recompile_the_train_step():
    model = demo.make_model(hidden=8)
    params = model.init(jax.random.key(0), jnp.zeros((1, 64)))
    objective = jp.regularize(demo.make_loss_fn(model), demo.make_penalties(params))
    optimizer = optax.adam(1e-3)
    step = demo.make_train_step(objective, optimizer)
    batch = {
        "x": jnp.ones((4, 64)),
        "y": jnp.array([5, 6, 7, 8]),
        "base_logprobs": jnp.full((4, 10), -jnp.log(10.0)),
    }
    opt_state = optimizer.init(params)
    weights = [(0.0, 0.0), (0.3, 0.0), (0.0, 0.1), (0.3, 0.02)]
    kw = [{"weights": {"kl_to_base": a, "l2_sp": b}} for a, b in weights]
    step(params, opt_state, batch, kw[0])  # compile once
    with count_compiles() as compiles:
        for k in kw[1:]:
            _, _, metrics = step(params, opt_state, batch, k)
            assert float(metrics["penalties"]["kl_to_base"]["weight"]) == pytest.approx(
                k["weights"]["kl_to_base"]
            )
        assert compiles() == 0


def test_bad_steps_flag_is_rejected(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--steps", "0"])
    assert "--steps must be >= 1" in capsys.readouterr().err
