"""Post-processing variants against the network: CPU ms per image and share of the whole call.

For each model and batch size, on the network's real outputs for the benchmark's shapes-dataset JPEGs
(:func:`bench.common.make_test_jpegs`, cycled to fill the batch), with per-image controls as the server
passes them (``[B]`` thresholds and caps, ``[B, C]`` class mask), it times in one process, interleaved
(every repetition calls every function once, in a rotated order; min and median reported):

* ``network``: the Keras network alone (means subtracted inside, as in :class:`Detector`);
* for each variant, its post-processing alone on the precomputed network outputs, and the whole call
  (network + that post-processing in one ``tf.function``, what ``Detector.run_batch`` compiles).

Each is called through its concrete function, as ``Detector.run_batch`` calls its own (since
2026-12-07 14:40; before, through ``tf.function``, whose per-call binding counted in every time).

Variants:

* ``top400``: ``postprocess(..., candidate_slots=())``: every anchor scored and decoded, the
  ``top_k x top_k`` IoU matrix and the fixed-point NMS over it (the code before candidate sizing; the
  ONNX export's path);
* ``sized_decode_all``: ``K`` sized to the candidates that passed (32, 128 or ``top_k``) but every
  anchor decoded (the first try; built here from the module's private helpers);
* ``sized_softmax_all``: ``K`` sized (32, 128 or ``top_k``), only the ``K`` candidates decoded, but the
  softmax and threshold over every anchor, and the IoU as it was computed before (each corner pair
  broadcast as a trailing ``[..., 2]``): ``postprocess`` as shipped before 2026-12-07 14:30;
* ``sized_iou``: the same with the shipped IoU (each coordinate broadcast on its own, the same bits)
  and the shipped :data:`~predictor.ssd.postprocess.CANDIDATE_SLOTS` (32, 64, 96, 128): what scoring
  only the anchors that may pass saves is ``sized_iou`` minus ``sized``;
* ``sized``: ``postprocess`` as shipped: softmax and threshold only on the anchors whose best class's
  bound ``sigmoid(l_c - l_0)`` clears the threshold, ``K`` sized, only the ``K`` candidates decoded;
* ``sized_xla``: ``sized`` compiled alone by XLA (``tf.function(jit_compile=True)`` inside the call):
  not the same bits as ``sized`` (XLA fuses the softmax and the decoding), compiled per batch size;
* ``combined_nms``: ``tf.image.combined_non_max_suppression`` (TF's CPU kernel), scalar thresholds only;
  per-class ``top_k`` *before* NMS, IoU ``>`` (not ``>=``) and no per-image controls, so not the seed's
  semantics: timed for comparison, its agreement with ``top400`` reported;
* ``no_nms``: softmax and threshold over every anchor + top-32 candidates only, no IoU and no NMS: the
  floor of the variants that score every anchor.

Low threshold: for the models in ``--low_models`` (the demo model), ``top400``, ``sized_softmax_all``
and ``sized`` again at score threshold ``--low_threshold`` (0.01, what mAP evaluation uses) at batches
``--low_batches`` (1, 8, 32): there an image has more candidates than the largest slot (and may have
more anchors that may pass than ``sized`` scores alone), so ``sized`` decodes the anchors that may pass
(or, when they are too many, scores and decodes every anchor after computing the bound) and keeps the
top ``top_k``; these rows give what that costs against the old full path (its own table in the
RESULTS.md block, with the branch taken per batch).

``python -m bench.postprocess_variants [--models demo,ssd300] [--batches 1,4,8,16,32] [--reps 9]
[--ssd300_batches 1,8] [--ssd300_reps 3] [--low_models demo] [--low_threshold 0.01] [--low_batches 1,8,32]``
-> table + JSON (``bench/out/postprocess_variants.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import OUT_DIR, fmt_table, machine_info, make_test_jpegs, model_dir, parse_ints, write_json
from bench.raw_model import resized_batch

VARIANTS = (
    "top400", "sized_decode_all", "sized_softmax_all", "sized_iou", "sized", "sized_xla", "combined_nms",
    "no_nms",
)  # fmt: skip


def make_variant(name: str, detector: Any) -> Callable[..., Any]:
    """``fn(loc, logits, image_hw, thr, caps, nms, mask) -> (boxes, scores, classes, num)`` for ``name``."""
    import tensorflow as tf

    from predictor.ssd import postprocess as pp
    from predictor.ssd.boxes import decode, normalized_to_pixels

    cfg, anchors = detector.config, detector.anchors
    top_k, max_det = detector.top_k, detector.max_detections

    def softmax_passed(logits, thr, mask):
        scores = tf.nn.softmax(logits, axis=-1)[:, :, 1:]
        return tf.where((scores > thr[:, None, None]) & mask[:, None, 1:], scores, 0.0)

    def shipped(loc, logits, image_hw, thr, caps, nms, mask):
        slots = () if name == "top400" else None
        det = pp.postprocess(
            loc, logits, anchors, image_hw, thr, caps, prior_scaling=cfg.prior_scaling, nms_threshold=nms,
            class_mask=mask, top_k=top_k, max_detections=max_det, candidate_slots=slots,
        )  # fmt: skip
        return tuple(det)

    xla = tf.function(shipped, jit_compile=True)

    def run(loc, logits, image_hw, thr, caps, nms, mask):
        if name in ("top400", "sized"):
            return shipped(loc, logits, image_hw, thr, caps, nms, mask)
        if name == "sized_xla":  # one XLA cluster inside the caller's graph
            return xla(loc, logits, image_hw, thr, caps, nms, mask)
        scores = softmax_passed(logits, thr, mask)  # [B, A, C-1]
        flat = tf.reshape(scores, [tf.shape(scores)[0], -1])
        num_fg = scores.shape[-1]
        geometry = (loc, anchors, image_hw, cfg.prior_scaling)
        if name in ("sized_decode_all", "sized_softmax_all", "sized_iou"):
            first_try = name == "sized_decode_all"
            sizes = [*(pp.CANDIDATE_SLOTS if name == "sized_iou" else (32, 128)), top_k]
            count = tf.reduce_max(tf.reduce_sum(tf.cast(flat > 0, tf.int32), axis=1))
            index = tf.reduce_sum(tf.cast(count > tf.constant(sizes[:-1], tf.int32), tf.int32))

            def branch(k):
                def candidates():
                    if first_try or k == top_k:  # every anchor decoded
                        return pp._candidates_decoded_first(flat, *geometry, num_fg, k)
                    return pp._candidates_decoded_after(flat, *geometry, num_fg, k)

                return lambda: tuple(pp._nms_select(*candidates(), nms, caps, max_det))

            with pair_broadcast_iou() if name != "sized_iou" else contextlib.nullcontext():
                return tf.switch_case(index, [branch(k) for k in sizes])
        if name == "combined_nms":  # scalar thresholds only: the first image's
            boxes = normalized_to_pixels(decode(loc, anchors, cfg.prior_scaling), image_hw)
            out = tf.image.combined_non_max_suppression(
                boxes[:, :, None, :], scores, top_k, max_det,
                iou_threshold=nms[0], score_threshold=thr[0], clip_boxes=False,
            )  # fmt: skip
            classes = tf.cast(out.nmsed_classes, tf.int32) + 1
            return out.nmsed_boxes, out.nmsed_scores, classes, out.valid_detections
        top, idx = tf.math.top_k(flat, k=32)  # no_nms: what every variant scoring every anchor pays
        return idx, top, idx, tf.reduce_sum(tf.cast(top > 0, tf.int32), 1)

    return run


def _iou_pair_broadcast(a, b):
    """``predictor.ssd.boxes.iou_xyxy`` as it was until 2026-12-07: corner pairs broadcast as ``[..., 2]``
    (the same values as today's, 3-4x slower on the CPU)."""
    import tensorflow as tf

    a1, a2 = a[..., :, None, :2], a[..., :, None, 2:]
    b1, b2 = b[..., None, :, :2], b[..., None, :, 2:]
    inter_wh = tf.maximum(tf.minimum(a2, b2) - tf.maximum(a1, b1), 0.0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    area_a = tf.reduce_prod(tf.maximum(a[..., 2:] - a[..., :2], 0.0), axis=-1)[..., :, None]
    area_b = tf.reduce_prod(tf.maximum(b[..., 2:] - b[..., :2], 0.0), axis=-1)[..., None, :]
    union = area_a + area_b - inter
    return tf.where(union > 0, inter / tf.maximum(union, 1e-12), 0.0)


@contextlib.contextmanager
def pair_broadcast_iou():
    """While tracing: post-processing's IoU computed as before (:func:`_iou_pair_broadcast`)."""
    from predictor.ssd import boxes

    saved = boxes.iou_xyxy
    boxes.iou_xyxy = _iou_pair_broadcast
    try:
        yield
    finally:
        boxes.iou_xyxy = saved


def agreement(out: tuple, ref: tuple) -> bool:
    """Same detections as ``ref`` (counts, classes exactly; scores and boxes to float32 rounding)."""
    num = np.asarray(out[3])
    if not np.array_equal(num, np.asarray(ref[3])):
        return False
    for b, n in enumerate(num.tolist()):
        if not np.array_equal(np.asarray(out[2])[b, :n], np.asarray(ref[2])[b, :n]):
            return False
        if not np.allclose(np.asarray(out[1])[b, :n], np.asarray(ref[1])[b, :n], atol=1e-6):
            return False
        if not np.allclose(np.asarray(out[0])[b, :n], np.asarray(ref[0])[b, :n], atol=1e-3):
            return False
    return True


def interleaved(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """Seconds of each call, ``reps`` rounds; each round calls every function once, rotated order."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


#: The variants timed at the low threshold (:data:`LOW_THRESHOLD`): the old full path, the code before
#: the bound preselect, and the shipped code (whose preselect falls back to scoring every anchor there).
LOW_VARIANTS = ("top400", "sized_softmax_all", "sized")

#: A score threshold low enough that most anchors may pass (mAP evaluation's): the shipped code's fallback.
LOW_THRESHOLD = 0.01


def bench_model(name: str, args: argparse.Namespace, jpegs: list[bytes]) -> dict:
    import tensorflow as tf

    from predictor.ssd import Detector, load_model
    from predictor.ssd.preprocess import subtract_means

    path, source = model_dir(name, args.out_dir)
    config, model = load_model(path)
    detector = Detector(config, model)
    network = tf.function(lambda x: model(subtract_means(x, config.means), training=False))
    post = {v: tf.function(make_variant(v, detector)) for v in VARIANTS}

    def whole(variant: str):
        fn = make_variant(variant, detector)

        def call(images, image_hw, thr, caps, nms, mask):
            out = model(subtract_means(images, config.means), training=False)
            return fn(out["loc"], out["logits"], image_hw, thr, caps, nms, mask)

        return tf.function(call)

    full = {v: whole(v) for v in VARIANTS}
    result: dict[str, Any] = {"model_dir": str(path), "source": source, "rows": []}
    batches, reps = (args.ssd300_batches, args.ssd300_reps) if name == "ssd300" else (args.batches, args.reps)
    result["reps"] = reps
    print(f"\n== {name}: {source}", flush=True)
    timing = (detector, jpegs, network, post, full)
    for batch in batches:
        row = time_batch(*timing, batch, detector.score_threshold, VARIANTS, reps)
        result["rows"].append(row)
    if name in args.low_models.split(",") and args.low_batches:
        from predictor.ssd.postprocess import CANDIDATE_ANCHORS, CANDIDATE_SLOTS

        low: dict[str, Any] = {
            "threshold": args.low_threshold, "candidate_anchors": CANDIDATE_ANCHORS,
            "largest_slot": max(CANDIDATE_SLOTS), "reps": reps, "rows": [],
        }  # fmt: skip
        print(f"  -- score threshold {args.low_threshold}", flush=True)
        for batch in args.low_batches:
            low["rows"].append(time_batch(*timing, batch, args.low_threshold, LOW_VARIANTS, reps))
        result["low_threshold"] = low
    return result


def time_batch(
    detector: Any,
    jpegs: list[bytes],
    network: Any,
    post: dict[str, Any],
    full: dict[str, Any],
    batch: int,
    threshold: float,
    variants: tuple[str, ...],
    reps: int,
) -> dict[str, Any]:
    """One row: ``variants`` (``"top400"`` among them) timed interleaved at ``batch`` images and score
    ``threshold``, the network alone beside them; ms per image (min, median), agreement with ``top400``,
    the most candidates and the most anchors that may pass (the preselect's bound) in one image."""
    import tensorflow as tf

    from predictor.ssd import postprocess as pp

    images, hw = resized_batch(detector, jpegs, batch)
    x, image_hw = tf.constant(images), tf.constant(hw)
    controls = (
        tf.fill([batch], np.float32(threshold)),
        tf.fill([batch], np.int32(detector.max_detections)),
        tf.fill([batch], np.float32(detector.nms_threshold)),
        tf.ones([batch, len(detector.config.class_names)], tf.bool),
    )
    raw = network(x)
    loc, logits = raw["loc"], raw["logits"]
    passed = tf.reduce_sum(
        tf.cast(tf.nn.softmax(logits)[:, :, 1:] > threshold, tf.int32), axis=[1, 2]
    ).numpy()
    _, may_pass = pp._anchors_that_may_pass(logits, controls[0], None, 1)
    _, path = pp.postprocess_with_path(
        loc, logits, detector.anchors, image_hw, controls[0], controls[1],
        prior_scaling=detector.config.prior_scaling, nms_threshold=controls[2], class_mask=controls[3],
        top_k=detector.top_k, max_detections=detector.max_detections,
    )  # fmt: skip
    outs = {v: post[v](loc, logits, image_hw, *controls) for v in variants}
    same = {v: agreement(outs[v], outs["top400"]) if v != "no_nms" else None for v in variants}
    for v in variants:
        full[v](x, image_hw, *controls)  # trace
    post_args, whole_args = (loc, logits, image_hw, *controls), (x, image_hw, *controls)
    # Each function's graph for these shapes, called directly as Detector.run_batch calls its own: no
    # tf.function argument binding or cache lookup (~0.1-0.3 ms a call) in the times.
    net_graph = network.get_concrete_function(x)
    post_graph = {v: post[v].get_concrete_function(*post_args) for v in variants}
    whole_graph = {v: full[v].get_concrete_function(*whole_args) for v in variants}
    fns: dict[str, Callable[[], Any]] = {"network": lambda x=x, g=net_graph: g(x)["loc"].numpy()}
    for v in variants:
        fns[f"post:{v}"] = lambda a=post_args, g=post_graph[v]: g(*a)[3].numpy()
        fns[f"whole:{v}"] = lambda a=whole_args, g=whole_graph[v]: g(*a)[3].numpy()
    times = interleaved(fns, reps)
    ms = {
        k: {"min": 1e3 * min(t) / batch, "median": 1e3 * statistics.median(t) / batch}
        for k, t in times.items()
    }
    row = {
        "batch": batch,
        "candidates_passed_max": int(passed.max()),
        "anchors_may_pass_max": int(may_pass),
        # the branch the shipped post-processing ran on these outputs (postprocess_with_path)
        "path": {
            "every_anchor": bool(path.every_anchor),
            "anchors": int(logits.shape[1]),
            **{f: int(getattr(path, f)) for f in ("scored", "candidates", "decoded")},
        },
        "ms_per_image": ms,
        "agrees": same,
    }
    net = ms["network"]["min"]
    for v in variants:
        p, w = ms[f"post:{v}"]["min"], ms[f"whole:{v}"]["min"]
        print(
            f"  batch {batch:2d} {v:12s}: post {p:6.2f} ms/img, whole {w:6.2f}, network {net:6.2f}; "
            f"share {100 * p / w:5.1f}% (post/whole), {100 * (1 - net / w):5.1f}% (1 - network/whole); "
            f"agrees with top400: {same[v]}",
            flush=True,
        )
    return row


SAME = {True: "yes", False: "no", None: "n/a (no detections)"}


HEADERS = ["batch", "variant", "post ms/img min", "median", "whole ms/img min", "median",
           "network ms/img min", "post / whole %", "1 - network/whole %", "same as top400"]  # fmt: skip


def table_rows(rows: list[dict], variants: tuple[str, ...]) -> list[list]:
    """Table rows (:data:`HEADERS`) of the JSON ``rows``: one per batch and variant."""
    out = []
    for r in rows:
        ms = r["ms_per_image"]
        for v in variants:
            p, w, n = ms[f"post:{v}"], ms[f"whole:{v}"], ms["network"]
            out.append([
                r["batch"], v, p["min"], p["median"], w["min"], w["median"], n["min"],
                100 * p["min"] / w["min"], 100 * (1 - n["min"] / w["min"]), SAME[r["agrees"][v]],
            ])  # fmt: skip
    return out


def branch_taken(row: dict, low: dict) -> str:
    """What ``sized`` ran on a low-threshold row: observed (the row's ``path``, from
    :func:`predictor.ssd.postprocess.postprocess_with_path`) where recorded, else inferred
    (:func:`branch_inferred`, rows from before 2026-12-07 21:00)."""
    path = row.get("path")
    if path is None:
        return branch_inferred(row, low)
    if path["every_anchor"]:
        decoded = " and decoded" if path["decoded"] == path["anchors"] else ""
        return f"every anchor scored{decoded}, K = {path['candidates']}"
    if path["decoded"] == path["scored"] and path["decoded"] != path["candidates"]:
        return f"{path['scored']} anchors scored and decoded, top {path['candidates']}"
    return f"{path['scored']} anchors scored, K = {path['candidates']}"


def branch_inferred(row: dict, low: dict) -> str:
    """What ``sized`` ran on a low-threshold row: ``"sized"`` (the anchors that may pass, ``K`` sized),
    ``"top_k of the anchors that may pass"`` (more candidates than the largest slot, all among those
    anchors: they alone decoded, top ``top_k``), ``"every anchor scored"`` (an image had more anchors
    that may pass than it scores alone, ``K`` still sized) or ``"every anchor scored and decoded"``
    (both: the ``top400`` path, after the bound). Inferred, not observed: the row's recorded counts put
    through the dispatch rule of :func:`predictor.ssd.postprocess.postprocess` before anchor tiers
    (2026-12-07 21:00), re-derived here; for rows recorded before the path was."""
    many_anchors = row["anchors_may_pass_max"] > low["candidate_anchors"]
    if row["candidates_passed_max"] > low["largest_slot"]:
        return "every anchor scored and decoded" if many_anchors else "top_k of the anchors that may pass"
    return "every anchor scored" if many_anchors else "sized"


def low_threshold_markdown(name: str, low: dict) -> list[str]:
    """The caption and table of a model's low-threshold rows (``bench_model``'s ``low_threshold``)."""
    counts = ", ".join(
        f"batch {r['batch']}: {r['candidates_passed_max']} / {r['anchors_may_pass_max']}"
        f" ({branch_taken(r, low)})"
        for r in low["rows"]
    )
    caption = (
        f"{name} at score threshold {low['threshold']} (mAP evaluation's), {low['reps']} interleaved rounds:"
        f" `sized` (shipped) scores only the anchors whose bound may pass and sizes `K` to the candidates;"
        f" when an image has more than {low['largest_slot']} candidates it decodes the scored anchors and"
        f" keeps the top `top_k`; when an image has more than {low['candidate_anchors']} such anchors it"
        f" scores a larger tier of anchors holding them (4x, up to 1/8 of the anchors), beyond that every"
        f" anchor (then decoding every anchor as `top400` does, after computing the bound). The most"
        f" candidates that passed / anchors that may pass in"
        f" one image, and the branch `sized` took: {counts}."
    )
    return [caption, fmt_table(HEADERS, table_rows(low["rows"], LOW_VARIANTS))]


def markdown(data: dict) -> str:
    """One table per model: per batch and variant, ms per image (min / median) and the shares; then, for
    the models timed at the low threshold, their table."""
    parts = []
    for name, m in data["models"].items():
        passed = ", ".join(f"{r['candidates_passed_max']} (batch {r['batch']})" for r in m["rows"])
        parts.append(
            f"{name} ({m['source']}), {m['reps']} interleaved rounds; ms per image, min and median over the"
            f" rounds; the most candidates that passed the score threshold in one image: {passed}."
        )
        parts.append(fmt_table(HEADERS, table_rows(m["rows"], VARIANTS)))
    for name, m in data["models"].items():
        if m.get("low_threshold"):
            parts.extend(low_threshold_markdown(name, m["low_threshold"]))
    parts.append(
        "`same as top400`: the same detections on these images. `combined_nms` matches here only because"
        " every image had the same thresholds and fewer candidates than its per-class limit: it takes scalar"
        " thresholds, keeps `top_k` per class (not over all classes) and suppresses at IoU `>` (not `>=`)."
    )
    return "\n\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,ssd300")
    parser.add_argument("--batches", type=parse_ints, default=[1, 4, 8, 16, 32])
    parser.add_argument("--reps", type=int, default=9, help="interleaved rounds (each times every function)")
    parser.add_argument("--ssd300_batches", type=parse_ints, default=[1, 8], help="SSD300's (0.4 s/image)")
    parser.add_argument("--ssd300_reps", type=int, default=3)
    parser.add_argument("--low_threshold", type=float, default=LOW_THRESHOLD, help="the low-threshold rows'")
    parser.add_argument("--low_models", default="demo", help="models timed at --low_threshold too")
    parser.add_argument("--low_batches", type=parse_ints, default=[1, 8, 32], help="batches of those rows")
    parser.add_argument(
        "--candidate_anchors", type=int, default=None,
        help="override predictor.ssd.postprocess.CANDIDATE_ANCHORS (e.g. 100: force the larger tiers)",
    )  # fmt: skip
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR)
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON (default OUT_DIR/postprocess_variants.json)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.candidate_anchors is not None:
        from predictor.ssd import postprocess

        postprocess.CANDIDATE_ANCHORS = args.candidate_anchors
    out = args.out or args.out_dir / "postprocess_variants.json"
    data: dict[str, Any] = {"machine": machine_info(), "settings": vars(args).copy(), "models": {}}
    jpegs = make_test_jpegs()
    for name in args.models.split(","):
        data["models"][name] = bench_model(name, args, jpegs)
        write_json(out, data)
    print("\n" + markdown(data))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
