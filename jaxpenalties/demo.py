"""Catastrophic forgetting on real data, and the two penalties that prevent it.

Run it with ``python -m jaxpenalties.demo`` (needs the ``demo`` extra:
``pip install 'jaxpenalties[demo]'``; about half a minute on two CPU cores).

The experiment uses scikit-learn's handwritten digits (``load_digits``, shipped
with scikit-learn, no download):

1. **Pre-train** a small MLP (flax.linen) on the *old task*: the digits 0-4.
2. **Fine-tune** it on the *new task*: the digits 5-9, never showing it an old
   digit again. Four settings, each from the same pre-trained weights:

   * ``fine-tune``: plain cross-entropy. The model forgets the old digits
     completely (old-task accuracy falls to about 0).
   * ``+ KL to base``: cross-entropy + w · KL(P_base ‖ P_model) on the new-task
     inputs (the frozen base model's predictions as soft targets, "Learning
     without Forgetting", Li and Hoiem 2016), with
     ``jp.Penalty(jp.kl_divergence, inputs=("base_logprobs", "logprobs"))``.
   * ``+ L2-SP``: cross-entropy + w · ‖θ − θ_base‖² (Li et al., Explicit
     Inductive Bias for Transfer Learning with Convolutional Networks, 2018), with
     ``jp.Penalty(jp.l2, inputs=("params",), kwargs={"center": base_params})``.
   * ``+ both``.

3. **Report** for each setting the accuracy on held-out old digits and new
   digits (a 10-way prediction: an old digit only counts if the model still
   prefers an old class for it) and KL(P_base ‖ P_model) on held-out old digits,
   i.e. how far the fine-tuned model has drifted from the base model where it
   used to be right. A plot of these quantities over fine-tuning steps is saved.

All four settings share **one** jitted train step built from
``jp.regularize(loss_fn, penalties)``: a setting is just a different
``weights={"kl_to_base": ..., "l2_sp": ...}`` argument (a weight of 0 switches a
penalty off), and changing weights never recompiles. The per-penalty metrics in
``aux["penalties"]`` (value, weight, contribution) are shown in the progress bar.

The direction of the KL matters. ``jp.kl_divergence(p, q)`` is KL(P‖Q); the
demo puts the base model first, KL(P_base ‖ P_model) (mode covering: the model
has to keep probability wherever the base model had some, so the old classes
stay reachable). The reverse, KL(P_model ‖ P_base), forbids probability where
the base model had none, i.e. exactly on the new classes, and then blocks
learning the new task at any weight strong enough to prevent forgetting.

Flags: ``--steps N`` fine-tuning steps per setting, ``--quick`` (a small run, for
tests), ``--out DIR`` where the plot goes (default ``demo_output``), ``--seed``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxpenalties as jp
from jaxpenalties._demo_setup import (
    NUM_CLASSES,
    OLD_CLASSES,
    SETTINGS,
    demo_imports,
    load_data,
    loss_fn_with_aux,
    make_evaluate,
    make_loss_fn,
    make_model,
    make_penalties,
    make_train_step,
)

__all__ = [
    "NUM_CLASSES",
    "OLD_CLASSES",
    "SETTINGS",
    "format_table",
    "load_data",
    "loss_fn_with_aux",
    "main",
    "make_evaluate",
    "make_loss_fn",
    "make_model",
    "make_penalties",
    "make_train_step",
    "plot",
    "run",
]

# ----------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------


def _batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield rng.integers(0, n, size=batch_size)


def run(
    *,
    steps: int = 300,
    pretrain_steps: int = 300,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    eval_every: int = 10,
    seed: int = 0,
    settings: dict[str, dict[str, Any]] | None = None,
    base_params: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Pre-trains on digits 0-4, then fine-tunes on 5-9 under each setting.

    Args:
      steps: fine-tuning steps per setting.
      pretrain_steps: pre-training steps on the old task.
      batch_size: examples per step (sampled with replacement).
      learning_rate: Adam's learning rate, for both phases.
      eval_every: record held-out metrics every this many fine-tuning steps.
      seed: seeds the split, the initialisation and the batches.
      settings: ``{label: {"kl_to_base": w, "l2_sp": w}}``; default ``SETTINGS``.
      base_params: pre-trained parameters (e.g. a previous outcome's
        ``"base_params"``) to fine-tune from; pre-training is then skipped.
      progress: show a tqdm progress bar.

    Returns:
      ``{"base": metrics of the pre-trained model, "results": {label: {"weights",
      "old_acc", "new_acc", "kl_to_base", "penalties": last step's per-penalty
      values, "history": {"step", "old_acc", "new_acc", "kl_to_base"}}},
      "seconds": wall time, "base_params": the pre-trained parameters}``. All
      numbers are Python floats.
    """
    _, _, tqdm, _ = demo_imports()
    settings = SETTINGS if settings is None else settings
    start = time.perf_counter()
    data = load_data(seed)
    model = make_model()
    loss_fn = make_loss_fn(model)
    optimizer = optax.adam(learning_rate)
    if base_params is not None:
        pretrain_steps = 0
    total_steps = pretrain_steps + steps * len(settings)
    bar = tqdm.tqdm(total=total_steps, disable=not progress, desc="pre-train")

    # Phase 1: pre-train on the old task (no penalties).
    if base_params is None:
        x_old, y_old = data["old_train"]
        params = model.init(jax.random.key(seed), x_old[:1])
        pretrain_step = make_train_step(loss_fn_with_aux(loss_fn), optimizer)
        opt_state = optimizer.init(params)
        for idx in _batches(len(y_old), batch_size, pretrain_steps, seed):
            batch = {"x": x_old[idx], "y": y_old[idx]}
            params, opt_state, _ = pretrain_step(params, opt_state, batch, {})
            bar.update()
        base_params = params
    evaluate = make_evaluate(model, base_params, data)
    base = _to_floats(evaluate(base_params))

    # Phase 2: fine-tune on the new task; one compiled step for every setting.
    x_new, y_new = data["new_train"]
    base_logprobs_new = np.asarray(jax.nn.log_softmax(model.apply(base_params, x_new)))
    objective = jp.regularize(loss_fn, make_penalties(base_params))
    train_step = make_train_step(objective, optimizer)
    results = {}
    for label, weights in settings.items():
        bar.set_description(label)
        params, opt_state = base_params, optimizer.init(base_params)
        kw = {"weights": {k: jnp.float32(v) for k, v in weights.items()}}
        history: dict[str, list[float]] = {
            "step": [0],
            **{k: [v] for k, v in base.items()},
        }
        metrics = None
        batches = _batches(len(y_new), batch_size, steps, seed + 1)
        for step, idx in enumerate(batches, start=1):
            # The frozen base model's log-probs travel in the batch.
            batch = {"x": x_new[idx], "y": y_new[idx]}
            batch["base_logprobs"] = base_logprobs_new[idx]
            params, opt_state, metrics = train_step(params, opt_state, batch, kw)
            if step % eval_every == 0 or step == steps:
                history["step"].append(step)
                for k, v in _to_floats(evaluate(params)).items():
                    history[k].append(v)
                bar.set_postfix(_postfix(metrics))
            bar.update()
        final = _to_floats(evaluate(params))
        results[label] = {
            "weights": dict(weights),
            **final,
            "penalties": {
                name: _to_floats(entry)
                for name, entry in (metrics or {"penalties": {}})["penalties"].items()
            },
            "history": history,
        }
    bar.close()
    return {
        "base": base,
        "results": results,
        "seconds": time.perf_counter() - start,
        "base_params": base_params,
    }


def _to_floats(tree: Mapping[str, Any]) -> dict[str, float]:
    """Scalar entries of a flat dict as Python floats (others are dropped)."""
    return {k: float(v) for k, v in tree.items() if np.ndim(v) == 0}


def _postfix(metrics: Mapping[str, Any]) -> dict[str, str]:
    postfix = {"ce": f"{float(metrics['loss']):.3f}"}
    for name, entry in metrics["penalties"].items():
        postfix[name] = f"{float(entry['value']):.3g}"
    return postfix


# ----------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------


def format_table(outcome: dict[str, Any]) -> str:
    """The results as a plain-text table, one row per setting.

    ``old acc`` / ``new acc``: held-out 10-way accuracy on digits 0-4 / 5-9.
    ``KL to base``: KL(P_base ‖ P_model) on held-out old digits. The last two
    columns are the penalty values of the last training batch, read from
    ``aux["penalties"]`` (computed even when a setting's weight is 0).
    """
    header = (
        f"{'setting':<13} {'w_kl':>5} {'w_l2sp':>6} {'old acc':>8} {'new acc':>8} "
        f"{'KL to base':>10} {'kl_to_base':>10} {'l2_sp':>7}"
    )
    base = outcome["base"]
    rows = [
        header,
        "-" * len(header),
        f"{'pre-trained':<13} {'':>5} {'':>6} {base['old_acc']:>8.3f} "
        f"{base['new_acc']:>8.3f} {base['kl_to_base']:>10.3f} {'':>10} {'':>7}",
    ]
    for label, r in outcome["results"].items():
        w = r["weights"]
        pen = {k: v.get("value", float("nan")) for k, v in r["penalties"].items()}
        rows.append(
            f"{label:<13} {w['kl_to_base']:>5g} {w['l2_sp']:>6g} "
            f"{r['old_acc']:>8.3f} {r['new_acc']:>8.3f} {r['kl_to_base']:>10.3f} "
            f"{pen.get('kl_to_base', float('nan')):>10.3f} "
            f"{pen.get('l2_sp', float('nan')):>7.2f}"
        )
    return "\n".join(rows)


def plot(outcome: dict[str, Any], path: str) -> str:
    """Saves old/new-task accuracy and KL to base over fine-tuning as a PNG."""
    _, _, _, Figure = demo_imports()
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (
        ("old_acc", "old-task accuracy (digits 0-4)"),
        ("new_acc", "new-task accuracy (digits 5-9)"),
        ("kl_to_base", "KL(P_base ‖ P_model) on old digits"),
    )
    for ax, (key, title) in zip(axes, panels, strict=True):
        for label, r in outcome["results"].items():
            ax.plot(r["history"]["step"], r["history"][key], label=label)
        ax.set_title(title)
        ax.set_xlabel("fine-tuning step")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylim(-0.02, 1.02)
    axes[2].set_yscale("symlog", linthresh=0.01)
    axes[0].legend()
    fig.suptitle("Fine-tuning on new digits: forgetting with and without penalties")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; returns the outcome dict (see ``run``)."""
    parser = argparse.ArgumentParser(
        prog="python -m jaxpenalties.demo",
        description="Catastrophic forgetting on digits, with and without "
        "KL-to-base and L2-SP penalties.",
    )
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps")
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    parser.add_argument("--out", default="demo_output", help="plot directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = parser.parse_args(argv)
    if args.quick:
        config = {"steps": 120, "pretrain_steps": 150, "eval_every": 20}
    else:
        config = {"steps": 300, "pretrain_steps": 300, "eval_every": 10}
    if args.steps is not None:
        if args.steps < 1:
            parser.error(f"--steps must be >= 1, got {args.steps}")
        config["steps"] = args.steps
    outcome = run(
        steps=config["steps"],
        pretrain_steps=config["pretrain_steps"],
        eval_every=config["eval_every"],
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(format_table(outcome))
    path = plot(outcome, os.path.abspath(os.path.join(args.out, "forgetting.png")))
    outcome["plot"] = path
    print(f"plot saved to {path}")
    print(f"total time {outcome['seconds']:.1f} s (without the plot)")
    return outcome


if __name__ == "__main__":
    main()
