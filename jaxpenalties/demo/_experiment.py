"""The experiment of the demo: pre-train, fine-tune in four settings, report.

See :mod:`jaxpenalties.demo` for what it shows and how to run it.
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
from jaxpenalties.demo._report import format_table, plot
from jaxpenalties.demo._setup import (
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
