"""Where post-processing's time goes: a ``tf.profiler`` trace of variants of
:mod:`bench.postprocess_variants`, each alone on the demo model's real outputs at one batch size.

For each variant it calls the concrete graph ``--calls`` times under the profiler and prints, per call:
the wall time of the graph (``KernelAndDeviceFunc::Run``), how many ops ran and their summed time (on
every thread), that time split into the ops outside any branch (``front``), inside a
``tf.switch_case`` branch and inside the NMS ``while`` loop, and the ``--top`` costliest ops.

``python -m bench.postprocess_trace [--variants sized_softmax_all,sized] [--batch 1] [--calls 100]``
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import make_test_jpegs, model_dir
from bench.raw_model import resized_batch


def trace(fn, args: tuple, calls: int) -> dict:
    """Per-call profile of ``fn(*args)``: ``run_us``, ``ops``, ``op_us`` and ``by_op`` {name: (count, us)}."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    for _ in range(20):
        fn(*args)[0].numpy()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(calls):
            fn(*args)[0].numpy()
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(Path(logdir).rglob("*.xplane.pb")).read_bytes())
    run_us, by_op = 0.0, collections.defaultdict(lambda: [0, 0.0])
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if name == "KernelAndDeviceFunc::Run":
                    run_us += event.duration_ps / 1e6
                if (
                    not line.name.startswith("tf_Compute")
                    or ":" not in name
                    or name.startswith(("Executor", "Threadpool"))
                ):
                    continue
                part = "loop" if "/while/" in name else "branch" if "switch_case" in name else "front"
                by_op[f"{part} {name.split('/')[-1]}"][0] += 1
                by_op[f"{part} {name.split('/')[-1]}"][1] += event.duration_ps / 1e6
    return {
        "run_us": run_us / calls,
        "ops": sum(c for c, _ in by_op.values()) / calls,
        "op_us": sum(u for _, u in by_op.values()) / calls,
        "by_op": {k: (c / calls, u / calls) for k, (c, u) in by_op.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="sized_softmax_all,sized")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from bench.postprocess_variants import make_variant
    from predictor.ssd import Detector, load_model
    from predictor.ssd.preprocess import subtract_means

    config, model = load_model(model_dir("demo")[0])
    detector = Detector(config, model)
    images, hw = resized_batch(detector, make_test_jpegs(), args.batch)
    raw = model(subtract_means(tf.constant(images), config.means), training=False)
    b = args.batch
    post_args = (
        raw["loc"], raw["logits"], tf.constant(hw), tf.fill([b], np.float32(detector.score_threshold)),
        tf.fill([b], np.int32(detector.max_detections)), tf.fill([b], np.float32(detector.nms_threshold)),
        tf.ones([b, len(config.class_names)], tf.bool),
    )  # fmt: skip
    for variant in args.variants.split(","):
        graph = tf.function(make_variant(variant, detector)).get_concrete_function(*post_args)
        t = trace(graph, post_args, args.calls)
        head = f"== {variant}, batch {b}: {t['run_us']:.0f} us a call"
        print(f"{head}, {t['ops']:.0f} ops taking {t['op_us']:.0f} us")
        for part in ("front", "branch", "loop"):
            ops = [(c, u) for k, (c, u) in t["by_op"].items() if k.startswith(part)]
            print(f"   {part:6s}: {sum(c for c, _ in ops):4.0f} ops {sum(u for _, u in ops):6.0f} us")
        for k, (c, u) in sorted(t["by_op"].items(), key=lambda kv: -kv[1][1])[: args.top]:
            print(f"   {u:7.1f} us  {c:4.1f}x  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
