"""On several hosts the code is the same: two JAX processes on this machine,
joined by JAX's multi-controller runtime (``jax.distributed``, gloo CPU
collectives, two CPU devices each), run

- a ``fused_linear_js_divergence`` value-and-grad step (frozen teacher) with
  the positions sharded over a 4-device "data" axis, and on a 2 x 2
  data/model mesh (positions over the processes, the vocabulary over each
  process's devices), under the explicit axes of ``jax.make_mesh``;
- a ``jp.regularize`` train step (the README quickstart's toy LM, a KL-to-base
  penalty with a scheduled weight and an entropy term, an optax SGD update)
  with the batch sharded over a 4-device "data" axis (automatic axes),

with the global arrays built from each process's own rows by
``jax.make_array_from_process_local_data``. Their values, gradients and
updated params, gathered with ``process_allgather``, equal the same jitted
functions run here, in one process on one device, to 1e-6 of each array's
largest magnitude. The inputs and steps are defined once, in
``multihost_worker.py``, the script each process runs.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from tests import multihost_worker as mw

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(mw.__file__).resolve()
# An upper bound, not the expected time (25-60 s on two shared cores): a
# process that hangs (a lost peer, a collective that never completes) fails the
# test after this long instead of hanging the suite.
DEADLINE_S = 180.0
# Largest deviation from the single-process result, relative to the array's
# largest magnitude (float32 epsilon is 1.2e-7; measured: at most 1.6e-7).
TOLERANCE = 1e-6

JS_CASES = ("data4", "data2xmodel2")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    """The environment without the caller's JAX/XLA settings (a platform, a
    forced device count, ...): each worker configures its own JAX."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    return env


def logs(out_dir: Path) -> str:
    return "\n".join(
        f"--- process {i} {stream} ---\n"
        + (out_dir / f"{stream}_{i}.txt").read_text(errors="replace")[-6000:]
        for i in range(mw.NUM_PROCESSES)
        for stream in ("stdout", "stderr")
    )


def start_workers(out_dir: Path) -> list[subprocess.Popen]:
    port, env, procs = free_port(), worker_env(), []
    for i in range(mw.NUM_PROCESSES):
        cmd = [sys.executable, "-W", "error", str(WORKER), str(i), str(port)]
        with (
            open(out_dir / f"stdout_{i}.txt", "wb") as stdout,
            open(out_dir / f"stderr_{i}.txt", "wb") as stderr,
        ):
            procs.append(
                subprocess.Popen(
                    [*cmd, str(out_dir)],
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                )
            )
    return procs


def wait_for(procs: list[subprocess.Popen], out_dir: Path) -> None:
    """Waits for both processes; kills both when one fails or time runs out."""
    deadline = time.monotonic() + DEADLINE_S
    try:
        while any(p.poll() is None for p in procs):
            codes = [p.poll() for p in procs]
            if any(c not in (None, 0) for c in codes):
                break  # one failed: the other would wait for it forever
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the two processes ran past {DEADLINE_S:.0f} s and were "
                    f"killed\n{logs(out_dir)}"
                )
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    codes = [p.returncode for p in procs]
    if mw.SKIP_STATUS in codes:
        err = (out_dir / f"stderr_{codes.index(mw.SKIP_STATUS)}.txt").read_text()
        pytest.skip(f"this JAX cannot run gloo CPU collectives: {err.strip()}")
    if codes != [0] * len(procs):
        pytest.fail(f"worker exit codes {codes}\n{logs(out_dir)}")


def single_process_reference() -> dict[str, dict[str, np.ndarray]]:
    """The same jitted steps on unsharded inputs, on one CPU device of this
    process."""
    with jax.default_device(jax.devices("cpu")[0]):
        a = mw.js_inputs()
        js = mw.js_step(a["h"], a["w"], a["ref_h"], a["ref_w"], a["mask"])
        r = mw.regularize_inputs()
        train = mw.train_step(
            r["params"], r["base_params"], r["batch"], np.int32(mw.STEP)
        )
        want = {f"js_{tag}": mw.js_results(js) for tag in JS_CASES}
        want["train"] = mw.train_results(train)
    return jax.tree.map(np.asarray, want)


def run_two_processes(out_dir: Path) -> dict:
    if "jax_cpu_collectives_implementation" not in jax.config.values:
        pytest.skip(
            f"jax {jax.__version__} has no jax_cpu_collectives_implementation "
            "option: no gloo CPU collectives to join two processes"
        )
    procs = start_workers(out_dir)
    try:
        # Computed while the workers start up and compile.
        want = single_process_reference()
    finally:
        wait_for(procs, out_dir)
    got = {
        case: [
            dict(np.load(out_dir / f"{case}_{i}.npz")) for i in range(mw.NUM_PROCESSES)
        ]
        for case in want
    }
    runtime = [
        json.loads((out_dir / f"runtime_{i}.json").read_text())
        for i in range(mw.NUM_PROCESSES)
    ]
    return {"want": want, "got": got, "runtime": runtime}


def assert_matches(got: dict, want: dict, what: str) -> None:
    assert sorted(got) == sorted(want), what
    for name, w in want.items():
        g = got[name]
        assert (g.shape, g.dtype) == (w.shape, w.dtype), (what, name)
        scale = max(float(np.max(np.abs(w))), float(np.finfo(w.dtype).tiny))
        error = float(np.max(np.abs(g.astype(np.float64) - w))) / scale
        assert error <= TOLERANCE, f"{what} {name}: relative error {error:.3g}"


def check_runtime(runtime: list[dict]) -> None:
    for i, r in enumerate(runtime):
        assert r["process_index"] == i, r
        assert r["process_count"] == mw.NUM_PROCESSES, r
        assert r["device_count"] == mw.NUM_PROCESSES * mw.LOCAL_DEVICES, r
        assert r["local_device_count"] == mw.LOCAL_DEVICES, r
        # Each process held only its own rows of the inputs.
        assert not r["js_data4_h_fully_addressable"], r
        assert not r["js_data2xmodel2_h_fully_addressable"], r
        assert not r["train_tokens_fully_addressable"], r
        # dh sharded like h, dw like w (vocabulary over "model" on the 2 x 2 mesh)
        assert r["js_data4_dh_spec"] == r["js_data2xmodel2_dh_spec"], r
        assert r["js_data4_dh_spec"].startswith("P('data'"), r
        assert r["js_data2xmodel2_dw_spec"] == "P(None, 'model')", r


# One test, not several sharing a fixture: pytest-xdist would start the two
# processes once per xdist worker that runs one of them.
def test_two_processes_equal_one(tmp_path):
    run = run_two_processes(tmp_path)
    check_runtime(run["runtime"])

    for mesh in JS_CASES:
        want = run["want"][f"js_{mesh}"]
        assert np.any(want["dh"] != 0) and np.any(want["dw"] != 0)
        for i, got in enumerate(run["got"][f"js_{mesh}"]):
            assert_matches(got, want, f"fused JS on {mesh}, process {i}")

    want = run["want"]["train"]
    # the KL weight's schedule, 0 -> 0.2 over 100 steps, at the traced step 50
    np.testing.assert_allclose(want["kl_weight"], 0.1, rtol=1e-6)
    assert np.any(want["grad_embed"] != 0) and np.any(want["grad_out"] != 0)
    for i, got in enumerate(run["got"]["train"]):
        assert_matches(got, want, f"regularize train step, process {i}")

    # Both processes gathered the same global results.
    for case, (first, *others) in run["got"].items():
        for other in others:
            for name in first:
                np.testing.assert_array_equal(other[name], first[name], (case, name))
