"""Where TensorFlow's time goes for the network alone at small batches, against ONNX Runtime, one run.

Each *setting* runs in a process of its own (TensorFlow fixes its thread pools and oneDNN at start):

* ``server``: the server's threads on this machine (intra-op = usable CPUs, inter-op = min(2, CPUs),
  :func:`predictor.serving.resources.default_tf_threads`), oneDNN on (TensorFlow's default on x86);
* ``intra<N>_inter<M>``: other thread pools; ``tf_default``: TensorFlow's own (0/0);
* ``onednn_off``: the server's threads with ``TF_ENABLE_ONEDNN_OPTS=0``.

In each process, for each model and batch, the same seeded float32 input (mean-subtracted scale) goes
through the network (no post-processing) called as:

* ``function``: ``tf.function(lambda x: model(x))`` (what ``make bench-model`` calls *network*);
* ``concrete``: its concrete function for ``[None, S, S, 3]`` called directly (no dispatch/signature
  matching);
* ``keras``: the eager Keras call ``model(x, training=False)``;
* ``xla``: ``tf.function(..., jit_compile=True)`` (XLA on the CPU);
* ``ort``: the network exported by :func:`predictor.ssd.onnx_export.network_onnx` in an ONNX Runtime
  CPU session (all graph optimisations, intra-op threads = usable CPUs), as ``make bench-onnx`` does.

The ``server`` process also times the whole detector: :meth:`Detector.run_batch` (TensorFlow, sized
post-processing), :class:`predictor.ssd.onnx_runtime.OrtDetector` (the ``--runtime onnxruntime``
path) and, for ``--whole_graph_models``, ``ssd-export onnx``'s whole graph in ORT, on the same images.
Every call mode's outputs are compared with ``function``'s of the ``server`` process (max absolute
difference of ``loc`` and ``logits`` at batch 1).

``python -m bench.tf_variants [--models demo,ssd300] [--batches 1,4,8]`` -> table + JSON
(``bench/out/tf_variants.json``); needs a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import OUT_DIR, fmt_table, machine_info, model_dir, parse_ints, write_json

#: setting -> (intra-op threads, inter-op threads, extra environment); None: the server's choice.
SETTINGS: dict[str, tuple[int | None, int | None, dict[str, str]]] = {
    "server": (None, None, {}),
    "intra2_inter1": (2, 1, {}),
    "intra1_inter1": (1, 1, {}),
    "tf_default": (0, 0, {}),
    "onednn_off": (None, None, {"TF_ENABLE_ONEDNN_OPTS": "0"}),
}
#: Call modes timed in every setting, and those timed only in ``server``.
MODES_ALL = ("function",)
MODES_SERVER = ("function", "concrete", "keras", "xla", "ort")


def interleaved(
    fns: dict[str, Any], min_time_s: float, min_iters: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds of each call of each ``fns[label]()``, called in turn (round after round) until every one
    has ``min_iters`` calls and ``min_time_s`` of calls, so that a burst of other work on the machine
    hits them alike; plus the cores this process used on average and the load average after."""
    times: dict[str, list[float]] = {label: [] for label in fns}

    def short(label: str) -> bool:
        return len(times[label]) < min_iters or sum(times[label]) < min_time_s

    cpu0, wall0 = time.process_time(), time.perf_counter()
    while any(short(label) for label in fns):
        for label, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    cores = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return times, {"process_cores_used": cores, "load_average_1m": os.getloadavg()[0]}


def rates(times: list[float], batch: int) -> dict[str, float]:
    """Images/s of the fastest call (the least disturbed: what is reported) and of the median one."""
    return {
        "images_per_s": batch / min(times),
        "images_per_s_median": batch / statistics.median(times),
        "calls": len(times),
    }


def _threads(setting: str) -> tuple[int, int]:
    from predictor.serving import resources

    intra, inter, _ = SETTINGS[setting]
    if intra is None:
        return resources.default_tf_threads(resources.read_limits())
    return intra, inter


def _callers(model: Any, s: int, modes: tuple[str, ...], onnx_dir: Path, name: str) -> dict[str, Any]:
    """Call mode -> function of a float32 ``[B, S, S, 3]`` array returning ``(loc, logits)`` arrays."""
    import tensorflow as tf

    fns: dict[str, Any] = {}
    spec = tf.TensorSpec([None, s, s, 3], tf.float32)
    graph = tf.function(lambda x: model(x, training=False))
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    xla = tf.function(lambda x: model(x, training=False), jit_compile=True)

    def tf_call(fn: Any) -> Any:
        return lambda x: (lambda o: (o["loc"].numpy(), o["logits"].numpy()))(fn(tf.constant(x)))

    fns["function"] = tf_call(graph)
    fns["concrete"] = tf_call(concrete)
    fns["keras"] = tf_call(lambda x: model(x, training=False))
    fns["xla"] = tf_call(xla)
    if "ort" in modes:
        from predictor.ssd.onnx_export import network_onnx
        from predictor.ssd.onnx_runtime import cpu_session

        path = onnx_dir / f"{name}_network.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(network_onnx(model, s).SerializeToString())
        session = cpu_session(path, _threads("server")[0])
        fns["ort"] = lambda x: tuple(session.run(["loc", "logits"], {"images": x}))
    return {m: fns[m] for m in modes}


def _detector_rows(name: str, path: Path, batches: list[int], args: argparse.Namespace) -> list[dict]:
    """Whole detector: TensorFlow ``run_batch`` vs :class:`OrtDetector` on the same resized images."""
    from predictor.ssd import Detector
    from predictor.ssd.onnx_runtime import OrtDetector

    tf_det = Detector.from_dir(str(path), max_batch_size=max(batches))
    threads = _threads("server")[0]
    ort_det = OrtDetector.from_detector(tf_det, threads=threads).open()
    whole = None
    if name in args.whole_graph_models.split(","):
        from predictor.ssd.onnx_export import detector_onnx, ort_feeds
        from predictor.ssd.onnx_runtime import cpu_session

        session = cpu_session(detector_onnx(tf_det).SerializeToString(), threads)
        outputs = ["num_detections", "detection_boxes", "detection_scores", "detection_classes"]
        whole = lambda i, h: session.run(outputs, ort_feeds(tf_det, i.astype(np.uint8), h, 0.05))  # noqa: E731
    rng = np.random.default_rng(1)
    s = tf_det.input_size
    rows = []
    for batch in batches:
        images = rng.integers(0, 256, (batch, s, s, 3)).astype(np.float32)
        hw = np.full((batch, 2), s, np.float32)
        outs = {label: det.run_batch(images, hw, 0.05) for label, det in (("tf", tf_det), ("ort", ort_det))}
        fns = {
            "tf": lambda i=images, h=hw: tf_det.run_batch(i, h, 0.05),
            "ort": lambda i=images, h=hw: ort_det.run_batch(i, h, 0.05),
        }
        if whole is not None:
            whole(images, hw)
            fns["whole_graph"] = lambda i=images, h=hw: whole(i, h)
        times, busy = interleaved(fns, args.min_time_s, args.min_iters)
        row: dict[str, Any] = {"model": name, "batch": batch, **busy}
        for label, t in times.items():
            row.update({f"{label}_{k}": v for k, v in rates(t, batch).items()})
        row["same_counts"] = bool((outs["tf"]["num_detections"] == outs["ort"]["num_detections"]).all())
        rows.append(row)
        print(
            f"  {name} detector batch {batch}: TF {row['tf_images_per_s']:.2f} img/s, "
            f"ORT {row['ort_images_per_s']:.2f} img/s, same counts {row['same_counts']}, "
            f"ORT whole graph {row.get('whole_graph_images_per_s')}; cores {row['process_cores_used']:.2f}",
            flush=True,
        )
    return rows


def worker(setting: str, args: argparse.Namespace) -> dict[str, Any]:
    """One setting's rows (runs in its own process)."""
    import tensorflow as tf

    from predictor.ssd import load_model

    intra, inter = _threads(setting)
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    modes = tuple(args.server_modes) if setting == "server" else MODES_ALL
    out: dict[str, Any] = {"setting": setting, "intra": intra, "inter": inter, "rows": [], "detector": []}
    refs = {}
    for name in args.models.split(","):
        path, _ = model_dir(name, args.out_dir)
        config, model = load_model(path)
        s = config.input_size
        callers = _callers(model, s, modes, args.out_dir / "onnx", name)
        rng = np.random.default_rng(0)
        for batch in args.batches:
            x = rng.uniform(-120, 130, (batch, s, s, 3)).astype(np.float32)
            for mode, fn in callers.items():
                first = fn(x)  # traces / compiles
                if batch == 1:
                    refs[f"{name}/{mode}"] = first
            fns = {mode: (lambda f=fn, x=x: f(x)) for mode, fn in callers.items()}
            times, busy = interleaved(fns, args.min_time_s, args.min_iters)
            for mode, t in times.items():
                row = {"model": name, "batch": batch, "mode": mode, **rates(t, batch), **busy}
                out["rows"].append(row)
                print(f"  [{setting}] {name} b{batch} {mode}: {row['images_per_s']:.2f} img/s best, "
                      f"{row['images_per_s_median']:.2f} median; cores {busy['process_cores_used']:.2f}",
                      flush=True)  # fmt: skip
        if setting == "server":
            out["detector"] += _detector_rows(name, path, args.batches, args)
    arrays = {f"{k}/{i}": v[i] for k, v in refs.items() for i in (0, 1)}
    np.savez(args.out_dir / f"tf_variants_{setting}.npz", **arrays)
    return out


def _modes(raw: str) -> list[str]:
    """``--server_modes``: a comma-separated subset of :data:`MODES_SERVER` with ``function`` (the
    max-diff reference) and ``ort`` (the ratios' base)."""
    modes = [m for m in raw.split(",") if m]
    unknown = sorted(set(modes) - set(MODES_SERVER))
    if unknown or not {"function", "ort"} <= set(modes):
        raise argparse.ArgumentTypeError(
            f"modes must be among {','.join(MODES_SERVER)} and include function and ort; got {raw!r}"
        )
    return modes


def _max_diffs(out_dir: Path, settings: list[str]) -> dict[str, float]:
    """``setting/model/mode`` -> max |outputs - server/function outputs| at batch 1."""
    ref = dict(np.load(out_dir / "tf_variants_server.npz"))
    diffs = {}
    for setting in settings:
        data = dict(np.load(out_dir / f"tf_variants_{setting}.npz"))
        for key, value in data.items():
            model, mode, _ = key.split("/")
            base = ref[f"{model}/function/{key.rsplit('/', 1)[1]}"]
            k = f"{setting}/{model}/{mode}"
            diffs[k] = max(diffs.get(k, 0.0), float(np.abs(value - base).max()))
    return diffs


def markdown(data: dict[str, Any]) -> str:
    """Network img/s by setting/mode and batch, with the ratio to ORT of the same run; then the whole
    detector, TF vs ORT."""
    rows = [r for s in data["settings"] for r in s["rows"]]
    ort = {(r["model"], r["batch"]): r["images_per_s"] for r in rows if r["mode"] == "ort"}
    batches = sorted({r["batch"] for r in rows})
    headers = ["model", "setting (intra/inter)", "call", *[f"b{b} img/s (/ORT)" for b in batches], "max diff"]
    table = []
    for s in data["settings"]:
        combos = dict.fromkeys((r["model"], r["mode"]) for r in s["rows"])
        for model, mode in combos:
            cells = []
            for b in batches:
                r = next(r for r in s["rows"] if (r["model"], r["mode"], r["batch"]) == (model, mode, b))
                ratio = "" if mode == "ort" else f" ({r['images_per_s'] / ort[(model, b)]:.2f})"
                cells.append(f"{r['images_per_s']:.3g}{ratio}")
            diff = data["max_abs_diff"].get(f"{s['setting']}/{model}/{mode}")
            label = f"{s['setting']} ({s['intra']}/{s['inter']})"
            table.append([model, label, mode, *cells, f"{diff:.0e}" if diff is not None else "-"])
    det_rows = [
        [r["model"], r["batch"], r["tf_images_per_s"], r["ort_images_per_s"],
         r["tf_images_per_s"] / r["ort_images_per_s"], "yes" if r["same_counts"] else "no",
         r.get("whole_graph_images_per_s")]
        for s in data["settings"] for r in s["detector"]
    ]  # fmt: skip
    det_headers = ["model", "batch", "TF run_batch img/s", "OrtDetector img/s", "TF / ORT", "same counts",
                   "ORT whole graph img/s"]  # fmt: skip
    det = fmt_table(det_headers, det_rows)
    return (
        "Network alone (no post-processing), images/s of the fastest call (the calls of a row group "
        "interleaved, at least "
        f"{data['min_time_s']:g} s and {data['min_iters']} calls each) and, in brackets, the ratio to "
        "ONNX Runtime (timed in the `server` process); `max diff`: largest "
        "|loc, logits - server/function| at batch 1.\n\n"
        f"{fmt_table(headers, table)}\n\nWhole detector (score threshold 0.05, random pixels), "
        "`Detector.run_batch` against `OrtDetector` (`--runtime onnxruntime`: the network in ORT, "
        "TensorFlow's sized post-processing) and the whole detector graph of `ssd-export onnx` in ORT "
        f"(uint8 images, NMS on all top-k candidates):\n\n{det}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,ssd300")
    parser.add_argument("--batches", type=parse_ints, default=[1, 4, 8])
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--whole_graph_models", default="demo", help="also time ssd-export's whole graph")
    parser.add_argument(
        "--server_modes",
        type=_modes,
        default=list(MODES_SERVER),
        help=f"call modes timed in the server setting (default {','.join(MODES_SERVER)}; "
        "e.g. function,ort for a short run of the whole-detector table at large batches)",
    )
    parser.add_argument("--min_time_s", type=float, default=1.5)
    parser.add_argument("--min_iters", type=int, default=3)
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)))
        return 0
    settings = args.settings.split(",")
    if settings[0] != "server":
        settings.insert(0, "server")
    data: dict[str, Any] = {"machine": machine_info(), "settings": [], "min_time_s": args.min_time_s,
                            "min_iters": args.min_iters}  # fmt: skip
    for setting in settings:
        env = {**os.environ, **SETTINGS[setting][2], "CUDA_VISIBLE_DEVICES": ""}
        cmd = [sys.executable, "-m", "bench.tf_variants", "--worker", setting, "--models", args.models,
               "--batches", ",".join(map(str, args.batches)), "--min_time_s", str(args.min_time_s),
               "--min_iters", str(args.min_iters), "--out_dir", str(args.out_dir),
               "--whole_graph_models", args.whole_graph_models,
               "--server_modes", ",".join(args.server_modes)]  # fmt: skip
        print(f"== {setting}", flush=True)
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        print("\n".join(line for line in proc.stdout.splitlines() if not line.startswith("RESULT ")))
        data["settings"].append(json.loads(proc.stdout.split("RESULT ", 1)[1]))
    data["max_abs_diff"] = _max_diffs(args.out_dir, settings)
    out = write_json(args.out_dir / "tf_variants.json", data)
    print("\n" + markdown(data) + f"\n\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
