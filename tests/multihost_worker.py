"""One of the two JAX processes that ``test_multihost.py`` starts.

Run as ``python tests/multihost_worker.py PROCESS_ID PORT OUT_DIR``. The two
processes join JAX's multi-controller runtime through a coordinator on
127.0.0.1:PORT, each with two CPU devices and gloo as the cross-process
collectives, so every mesh below spans 4 devices in 2 processes. Each process
builds the global arrays from its own rows with
``jax.make_array_from_process_local_data``, runs the jitted steps, gathers the
results with ``process_allgather`` and saves them to ``OUT_DIR/<case>_<id>.npz``
(and what it saw of the runtime to ``OUT_DIR/runtime_<id>.json``).

The inputs and the steps are defined here once: the test imports them and runs
them in its own process on one device, the single-process reference. Importing
this module changes no JAX configuration (pytest imports it for doctests).

Exit status 77: this JAX cannot use gloo CPU collectives (the reason is printed).
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxpenalties as jp

# Fused JS case: 16 positions, student H = 8, teacher H = 6, V = 64.
B, T, H, HR, V = 4, 4, 8, 6, 64
# Regularize case: the README quickstart's toy LM on an [8, 4] token batch.
VOCAB, DIM, RB, RT = 64, 8, 8, 4
STEP = 50  # the KL weight's schedule is evaluated at this (traced) step

SKIP_STATUS = 77
NUM_PROCESSES = 2
LOCAL_DEVICES = 2


# -- inputs -------------------------------------------------------------------


def js_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "h": rng.normal(size=(B, T, H)).astype(np.float32),
        "w": (rng.normal(size=(H, V)) / 2).astype(np.float32),
        "ref_h": rng.normal(size=(B, T, HR)).astype(np.float32),
        "ref_w": (rng.normal(size=(HR, V)) / 2).astype(np.float32),
        "mask": rng.random((B, T)) < 0.75,
    }


def lm_params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "embed": (0.5 * rng.normal(size=(VOCAB, DIM))).astype(np.float32),
        "out": (0.5 * rng.normal(size=(DIM, VOCAB))).astype(np.float32),
    }


def regularize_inputs() -> dict[str, object]:
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, VOCAB, size=(RB, RT)).astype(np.int32)
    batch = {
        "tokens": tokens,
        "targets": ((tokens + 1) % VOCAB).astype(np.int32),
        "mask": rng.random((RB, RT)) < 0.8,
    }
    return {"params": lm_params(1), "base_params": lm_params(2), "batch": batch}


# -- the steps ----------------------------------------------------------------


def js_loss(h, w, ref_h, ref_w, mask):
    # The teacher is frozen: no gradient flows into its hidden states or head.
    ref_h, ref_w = jax.lax.stop_gradient((ref_h, ref_w))
    return jp.fused_linear_js_divergence(
        h, w, ref_h, ref_w, beta=0.3, temperature=2.0, where=mask, chunk_size=4
    )


# value and (dh, dw) of the student; 4 chunks of 4 positions
js_step = jax.jit(jax.value_and_grad(js_loss, argnums=(0, 1)))


def apply(params, tokens):  # the quickstart's toy LM: [B, T] -> [B, T, VOCAB]
    return jnp.tanh(params["embed"][tokens]) @ params["out"]


def regularized_loss(base_params):
    def loss_fn(params, batch):
        logprobs = jax.nn.log_softmax(apply(params, batch["tokens"]))
        token_lp = jnp.take_along_axis(logprobs, batch["targets"][..., None], -1)
        mask = batch["mask"].astype(jnp.float32)
        nll = -jnp.sum(token_lp[..., 0] * mask) / jnp.sum(mask)
        return nll, {"logprobs": logprobs}

    def base_logprobs(params, batch, outputs):  # the frozen base model
        return jax.nn.log_softmax(apply(base_params, batch["tokens"]))

    return jp.regularize(
        loss_fn,
        [
            jp.Penalty(
                jp.kl_divergence,
                inputs=("logprobs", base_logprobs),
                name="kl",
                weight=optax.linear_schedule(0.0, 0.2, 100),
                where="mask",
            ),
            jp.Penalty(jp.entropy, inputs=("logprobs",), weight=0.01, where="mask"),
        ],
    )


TX = optax.sgd(0.5)


@jax.jit
def train_step(params, base_params, batch, step):
    loss = regularized_loss(base_params)
    (total, aux), grads = jax.value_and_grad(loss, has_aux=True)(
        params, batch, step=step
    )
    updates, _ = TX.update(grads, TX.init(params), params)
    return total, aux, grads, optax.apply_updates(params, updates)


def js_results(out) -> dict[str, np.ndarray]:
    value, (dh, dw) = out
    return {"value": value, "dh": dh, "dw": dw}


def train_results(out) -> dict[str, np.ndarray]:
    total, aux, grads, new_params = out
    return {
        "total": total,
        "loss": aux["loss"],
        "kl": aux["penalties"]["kl"]["value"],
        "kl_weight": aux["penalties"]["kl"]["weight"],
        "entropy": aux["penalties"]["entropy"]["value"],
        "grad_embed": grads["embed"],
        "grad_out": grads["out"],
        "new_embed": new_params["embed"],
        "new_out": new_params["out"],
    }


# -- the process ----------------------------------------------------------------


def local_rows(global_array: np.ndarray, sharding) -> np.ndarray:
    """This process's part of ``global_array``: the union of the index ranges
    its devices hold (a contiguous block for the meshes used here)."""
    starts = np.full(global_array.ndim, np.iinfo(np.int64).max)
    stops = np.zeros(global_array.ndim, np.int64)
    for index in sharding.addressable_devices_indices_map(global_array.shape).values():
        for axis, s in enumerate(index):
            start, stop, _ = s.indices(global_array.shape[axis])
            starts[axis] = min(starts[axis], start)
            stops[axis] = max(stops[axis], stop)
    return global_array[tuple(slice(a, b) for a, b in zip(starts, stops, strict=True))]


def make_global(tree, shardings):
    return jax.tree.map(
        lambda a, s: jax.make_array_from_process_local_data(
            s, local_rows(a, s), a.shape
        ),
        tree,
        shardings,
    )


def main() -> None:
    from jax.experimental import multihost_utils
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    process_id, port, out_dir = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, KeyError, ValueError) as e:
        print(f"gloo CPU collectives unavailable: {e!r}", file=sys.stderr)
        sys.exit(SKIP_STATUS)
    jax.config.update("jax_num_cpu_devices", LOCAL_DEVICES)
    # The test suite's configuration (tests/conftest.py).
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_default_matmul_precision", "highest")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=NUM_PROCESSES,
        process_id=process_id,
        initialization_timeout=60,
    )

    def save(case: str, tree) -> None:
        # Every process takes part in the gather (a collective); each saves
        # the global values it got.
        gathered = multihost_utils.process_allgather(tree, tiled=True)
        np.savez(out_dir / f"{case}_{process_id}.npz", **gathered)

    runtime = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
    }

    # (a) fused JS, positions over a 4-device "data" axis (2 devices per
    # process), and on a 2 x 2 data/model mesh: positions over the processes,
    # the vocabulary over each process's two devices (tensor-parallel head).
    meshes = {
        "data4": (jax.make_mesh((4,), ("data",)), P()),
        "data2xmodel2": (
            jax.make_mesh((2, 2), ("data", "model")),
            P(None, "model"),
        ),
    }
    for tag, (mesh, kernel_spec) in meshes.items():
        rows, kernel = NamedSharding(mesh, P("data")), NamedSharding(mesh, kernel_spec)
        args = make_global(
            js_inputs(),
            {"h": rows, "w": kernel, "ref_h": rows, "ref_w": kernel, "mask": rows},
        )
        runtime[f"js_{tag}_h_fully_addressable"] = args["h"].is_fully_addressable
        out = js_step(args["h"], args["w"], args["ref_h"], args["ref_w"], args["mask"])
        _, (dh, dw) = out
        runtime[f"js_{tag}_dh_spec"] = str(dh.sharding.spec)
        runtime[f"js_{tag}_dw_spec"] = str(dw.sharding.spec)
        save(f"js_{tag}", js_results(out))

    # (b) a jp.regularize train step, the batch over a 4-device "data" axis,
    # the params (and the frozen base params) replicated. Automatic axes: the
    # toy LM's embedding lookup (a gather with sharded indices) has no
    # unambiguous output sharding under explicit axes.
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
    rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    inputs = regularize_inputs()
    params = make_global(inputs["params"], {"embed": replicated, "out": replicated})
    base = make_global(inputs["base_params"], {"embed": replicated, "out": replicated})
    batch = make_global(inputs["batch"], dict.fromkeys(inputs["batch"], rows))
    runtime["train_tokens_fully_addressable"] = batch["tokens"].is_fully_addressable
    out = train_step(params, base, batch, jnp.int32(STEP))
    save("train", train_results(out))

    (out_dir / f"runtime_{process_id}.json").write_text(json.dumps(runtime))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
