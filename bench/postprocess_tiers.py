"""Anchor tiers of the post-processing against the old every-anchor fallback and ``top400``, demo model.

For each ``threshold:candidate_anchors`` spec and batch 1 / 8 / 32, on the demo network's outputs for
the bench's shapes JPEGs (cycled), per-image controls as the server passes them, it times interleaved
(each round calls every function once, rotated; min and median of the rounds, ms per image):

* ``top400``: ``postprocess(..., candidate_slots=())`` (every anchor scored and decoded, K = 400);
* ``shipped``: ``postprocess`` with ``CANDIDATE_ANCHORS`` set to the spec's (its tiers as shipped);
* ``notier``: the same without the larger tiers (``ANCHOR_TIER_FACTOR`` huge: more anchors that may
  pass than ``CANDIDATE_ANCHORS`` -> every anchor scored, the code before 2026-12-07 21:00);
* ``bound``: the bound and its count alone (what every sized variant pays first).

It prints the most anchors that may pass / candidates in one image, the branch ``shipped`` ran
(``postprocess_with_path``) and whether each variant's detections are ``top400``'s bit for bit.

``python -m bench.postprocess_tiers [--specs 0.01:100,0.002:256,0.0005:256] [--reps 11] [--tier_share 2]``
(2026-12-07 21:05 run: bench/RESULTS.md, "Post-processing variants").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--specs", default="0.01:100,0.002:256,0.0005:256", help="threshold:candidate_anchors"
    )
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument(
        "--tier_share",
        type=float,
        default=None,
        help="tiers up to 1/N of the anchors (default: the shipped TIER_ANCHOR_SHARE; 2 lets the demo's "
        "8,732 anchors reach a 4,096 tier, as measured before the cap)",
    )
    args = parser.parse_args(argv)

    import tensorflow as tf

    from bench.common import make_test_jpegs, model_dir
    from bench.raw_model import resized_batch
    from predictor.ssd import Detector, load_model
    from predictor.ssd import postprocess as pp
    from predictor.ssd.preprocess import subtract_means

    config, model = load_model(model_dir("demo")[0])
    det = Detector(config, model)
    anchors, jpegs = det.anchors, make_test_jpegs()

    def shipped(slots=None, tier_factor=None):
        def run(loc, logits, hw, thr, caps, nms, mask):
            saved = pp.ANCHOR_TIER_FACTOR
            pp.ANCHOR_TIER_FACTOR = tier_factor or saved
            try:
                return tuple(pp.postprocess(
                    loc, logits, anchors, hw, thr, caps, prior_scaling=config.prior_scaling,
                    nms_threshold=nms, class_mask=mask, top_k=det.top_k,
                    max_detections=det.max_detections, candidate_slots=slots,
                ))  # fmt: skip
            finally:
                pp.ANCHOR_TIER_FACTOR = saved

        return run

    def bound(loc, logits, hw, thr, caps, nms, mask):
        may_pass = pp._may_pass(logits, thr, mask[:, 1:])
        return tf.reduce_max(tf.reduce_sum(tf.cast(may_pass, tf.int32), axis=1))

    if args.tier_share is not None:
        pp.TIER_ANCHOR_SHARE = args.tier_share  # this process only: every variant traced below sees it
    variants = {
        "notier": shipped(tier_factor=10**9),
        "top400": shipped(()),
        "shipped": shipped(),
        "bound": bound,
    }
    for spec in args.specs.split(","):
        threshold, candidate_anchors = float(spec.split(":")[0]), int(spec.split(":")[1])
        print(f"== threshold {threshold}, CANDIDATE_ANCHORS {candidate_anchors}", flush=True)
        for batch in (int(b) for b in args.batches.split(",")):
            images, hw = resized_batch(det, jpegs, batch)
            x = tf.constant(np.stack(images))
            out = model(subtract_means(x, config.means), training=False)
            controls = (
                tf.fill([batch], np.float32(threshold)),
                tf.fill([batch], np.int32(det.max_detections)),
                tf.fill([batch], np.float32(det.nms_threshold)),
                tf.ones([batch, len(config.class_names)], tf.bool),
            )
            inputs = (out["loc"], out["logits"], tf.constant(hw), *controls)
            saved = pp.CANDIDATE_ANCHORS
            pp.CANDIDATE_ANCHORS = candidate_anchors
            try:
                graphs = {k: tf.function(f).get_concrete_function(*inputs) for k, f in variants.items()}
                _, path = pp.postprocess_with_path(
                    inputs[0], inputs[1], anchors, inputs[2], controls[0], controls[1],
                    prior_scaling=config.prior_scaling, nms_threshold=controls[2], class_mask=controls[3],
                    top_k=det.top_k, max_detections=det.max_detections,
                )  # fmt: skip
            finally:
                pp.CANDIDATE_ANCHORS = saved
            passed = tf.reduce_sum(
                tf.cast(tf.nn.softmax(out["logits"])[:, :, 1:] > threshold, tf.int32), [1, 2]
            )
            print(
                f"batch {batch}: anchors that may pass {int(graphs['bound'](*inputs))}, candidates"
                f" {int(tf.reduce_max(passed))}; shipped ran: every anchor {bool(path.every_anchor)}, scored"
                f" {int(path.scored)}, K {int(path.candidates)}, decoded {int(path.decoded)}",
                flush=True,
            )
            ref = graphs["top400"](*inputs)
            for graph in graphs.values():  # each graph's first call (grappler's pass) is not timed
                graph(*inputs)
            times: dict[str, list[float]] = {k: [] for k in graphs}
            names = list(graphs)
            for r in range(args.reps):
                for k in names[r % len(names) :] + names[: r % len(names)]:
                    t0 = time.perf_counter()
                    [np.asarray(v) for v in tf.nest.flatten(graphs[k](*inputs))]
                    times[k].append(time.perf_counter() - t0)
            for k in names:
                o = graphs[k](*inputs)
                same = (
                    all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(o, ref, strict=True))
                    if isinstance(o, tuple)
                    else "n/a"
                )
                t = times[k]
                print(
                    f"  {k:8s} min {1e3 * min(t) / batch:7.3f}"
                    f" median {1e3 * statistics.median(t) / batch:7.3f} ms/img; same bits as top400: {same}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
