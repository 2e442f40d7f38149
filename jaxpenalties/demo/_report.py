"""The demo's results as a table and a plot."""

from __future__ import annotations

import os
from typing import Any

from jaxpenalties.demo._setup import demo_imports


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
