"""Mutation testing of the box coding, anchors, post-processing, wire formats, request parsing, image
decoding, batcher and request admission (``make mutation``).

``python scripts/mutation_testing.py run [--only NAME ...]`` runs mutmut 3 on each target of
:data:`TARGETS`, one module at a time, each in its own scratch folder ``build/mutation/NAME`` (a copy of
``predictor/`` and ``tests/`` plus a generated ``pyproject.toml`` whose ``[tool.mutmut]`` names the one
module to mutate and the tests that may kill its mutants). It writes the full result of the run to
``build/mutation/NAME/result.json`` and its compact form, the one committed to the repository, to
``docs/mutation/NAME.json``: the counts by status, and every mutant not killed with its diff, plus the
date, run time, machine and tool version of the run.

``python scripts/mutation_testing.py report`` turns the committed ``docs/mutation/*.json`` into
``docs/mutation-testing.md`` (``make mutation-report``; no mutmut, no ``build/``, so it works on a clean
clone): mutants per module (killed, survived, timeout), the score, and every surviving mutant with a
reason from :data:`EQUIVALENT` or :data:`NOT_KILLED`, which can be reviewed and re-keyed without running
mutmut again. ``docs/mutation/baseline.json`` holds the scores of the tests before they were strengthened.

Other modes: ``run --resume`` finishes interrupted runs; ``rerun`` re-runs only the mutants a run did not
kill (and its timeouts), against today's tests (after adding tests: mutants once killed stay killed while
tests are only added); ``run --tests-rev REV --out DIR`` measures an older test suite (a baseline), from
which ``report --baseline DIR`` rewrites ``docs/mutation/baseline.json``, shown next to today's scores.

Why mutmut's ``forkserver`` isolation: mutmut forks a worker per mutant; TensorFlow's thread pools do not
survive a fork of a process that has run TensorFlow ops, so the workers are forked from a server process
that has only imported the tests, never run them.

The score is ``killed / (total - equivalent)``: a mutant listed in :data:`EQUIVALENT` (reviewed: no test
can tell it from the original, with the reason) is neither killed nor counted against the score; a
timeout counts as killed (the mutant made the tests hang) but is reported on its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "mutation"
REPORT = REPO / "docs" / "mutation-testing.md"
#: Committed results: ``NAME.json`` per target (what ``report`` needs) and ``baseline.json``.
RESULTS = REPO / "docs" / "mutation"
#: Score every target must reach (``check`` fails below it).
REQUIRED_SCORE = 80.0


@dataclass(frozen=True)
class Target:
    """One module to mutate and the fastest tests that exercise it (no real-server test)."""

    name: str
    module: str  # path from the repository root
    tests: tuple[str, ...]  # pytest arguments: files or node ids
    #: mutmut's wall-time limit per mutant is ``(seconds of its tests + 1) * timeout_multiplier`` (mutmut's
    #: default 15); lower where the tests fail fast on their own (a virtual clock), so that the mutants that
    #: spin without yielding are cut off in seconds rather than minutes.
    timeout_multiplier: float | None = None


_PROTOCOL_UNIT = tuple(
    f"tests/test_protocol.py::{name}"
    for name in (
        "test_every_protocol_reads_back_to_the_v1_records",
        "test_malformed_answers_name_the_field",
        "test_numeric_tensors_round_trip",
        "test_bytes_elements",
        "test_grpc_messages_are_kserves_on_the_wire",
        "test_binary_extension_body_framing",
        "test_excerpt_and_load_json_exact",
        "test_base64_text_exact",
        "test_detections_read_back_exact",
        "test_tensor_helpers_exact",
    )
)
_UINT8_UNIT = tuple(
    f"tests/test_uint8_input.py::{name}"
    for name in (
        "test_uint8_tensor_parses_into_one_pixel_payload_per_image",
        "test_uint8_raw_contents_are_not_copied",
        "test_bad_uint8_tensors_are_400_naming_the_input",
        "test_raw_uint8_contents_of_the_wrong_length_are_400",
    )
)

#: The request admission tests that need no model server (the ASGI middleware driven by hand, the byte
#: budget, the gRPC interceptor on an in-process grpc.aio server).
_ADMISSION_UNIT = tuple(
    f"tests/test_request_admission.py::{name}"
    for name in (
        "test_a_declared_body_over_the_limit_gets_413_unread",
        "test_a_declared_body_over_the_budget_gets_503_with_retry_after_unread",
        "test_a_lone_request_is_admitted_whatever_its_size_and_released_after",
        "test_a_streamed_body_over_the_limit_gets_413_and_is_not_read_further",
        "test_a_chunked_body_is_counted_as_it_streams",
        "test_a_full_image_queue_refuses_inference_requests_before_reading",
        "test_a_503_from_the_app_gets_retry_after",
        "test_budget_accounting",
        "test_grpc_messages_are_counted_while_their_call_runs_and_released_after",
        "test_grpc_messages_over_the_budget_are_refused_unparsed",
        "test_a_message_that_fails_to_parse_gives_its_bytes_back",
        "test_the_admitting_grpc_server_is_kserves_with_the_interceptor_first",
        "test_json_parse_cost_counts_values_and_lists",
        "test_the_json_part_of_a_body_is_charged_by_its_parse_cost",
        "test_a_malformed_binary_header_length_charges_the_whole_body_and_releases_it",
        "test_a_json_body_too_costly_to_parse_gets_413_pointing_to_binary_tensors",
        "test_grpc_concurrency_keeps_messages_within_the_budget_plus_one",
        "test_call_limiter_admits_limit_queues_max_waiting_and_refuses_the_rest",
        "test_grpc_calls_past_the_limiter_are_refused_and_an_empty_call_is_invalid",
        "test_call_limiter_arguments_are_checked",
        "test_call_limiter_counts_every_waiting_call",
    )
)
_IMAGE_FUZZ = tuple(
    f"tests/test_fuzz.py::{name}"
    for name in (
        "test_arbitrary_bytes",
        "test_truncated_images",
        "test_bit_flips",
        "test_spliced_bytes",
        "test_forged_dimensions",
        "test_forged_huge_png_dimensions",
        "test_forged_bmp_dimensions",
        "test_base64_text",
    )
)

#: The one list of what is mutated and by which tests (re-point it when a module moves).
TARGETS: tuple[Target, ...] = (
    Target("boxes", "predictor/ssd/boxes.py", ("tests/test_boxes.py",)),
    Target("anchors", "predictor/ssd/anchors.py", ("tests/test_anchors.py",)),
    Target(
        "postprocess",
        "predictor/ssd/postprocess.py",
        (
            "tests/test_postprocess.py",
            "tests/test_postprocess_reference.py::test_postprocess_matches_the_numpy_reference",
            "tests/test_postprocess_reference.py::test_per_image_thresholds_and_caps_match_the_reference",
            "tests/test_postprocess_reference.py::test_each_candidate_size_matches_the_reference_and_the_unsized_path",
            "tests/test_postprocess_reference.py::"
            "test_scoring_the_anchors_that_may_pass_matches_the_reference_and_the_unsized_path",
        ),
    ),
    Target(
        "codecs",
        "predictor/serving/codecs.py",
        (
            "tests/test_codecs.py",
            "tests/test_detection_controls.py::test_parse_controls",
            "tests/test_detection_controls.py::test_bad_controls_name_the_field",
            "tests/test_detection_controls.py::test_class_mask_resolves_names_and_ids",
            "tests/test_detection_controls.py::test_v1_strict_keys_accept_the_new_parameters",
            *_UINT8_UNIT,
            *_PROTOCOL_UNIT,
        ),
    ),
    Target("binary_ext", "predictor/protocol/binary_ext.py", ("tests/test_binary_ext.py", *_PROTOCOL_UNIT)),
    Target(
        "tensors",
        "predictor/protocol/tensors.py",
        ("tests/test_binary_ext.py", "tests/test_codecs.py", *_UINT8_UNIT, *_PROTOCOL_UNIT),
    ),
    Target(
        "base64text",
        "predictor/protocol/base64text.py",
        (
            "tests/test_codecs.py",
            "tests/test_images.py::test_base64_forms",
            "tests/test_images.py::test_bad_base64",
            *_PROTOCOL_UNIT,
        ),
    ),
    Target(
        "json_body",
        "predictor/protocol/json_body.py",
        ("tests/test_binary_ext.py", "tests/test_codecs.py", *_PROTOCOL_UNIT),
    ),
    Target(
        "detections",
        "predictor/protocol/detections.py",
        (
            "tests/test_codecs.py",
            "tests/test_predictor_client.py::test_v2_tensors_normalise_like_v1",
            *_PROTOCOL_UNIT,
        ),
    ),
    Target(
        "v2_binary", "predictor/serving/binary_ext_kserve.py", ("tests/test_binary_ext.py", *_PROTOCOL_UNIT)
    ),
    Target("images", "predictor/serving/images.py", ("tests/test_images.py", *_IMAGE_FUZZ)),
    Target(
        "batcher",
        "predictor/serving/batcher.py",
        ("tests/test_batcher.py", "tests/test_batcher_fill.py", "tests/test_scale_signal.py"),
        timeout_multiplier=8.0,
    ),
    Target(
        "admission",
        "predictor/serving/admission.py",
        (*_ADMISSION_UNIT, "tests/test_heap.py"),
    ),
    Target(
        "middleware",
        "predictor/serving/middleware.py",
        (
            *_ADMISSION_UNIT,
            *(
                f"tests/test_request_admission.py::{name}"
                for name in (
                    "test_admission_edges_counts_and_the_refusal_body",
                    "test_every_request_gets_an_id_kept_when_the_client_sent_one",
                    "test_rest_protocol_of_a_path",
                    "test_inference_answers_are_counted_and_errors_logged_once",
                    "test_an_app_that_raises_is_counted_as_a_500_with_its_error",
                    "test_install_adds_the_middlewares_outermost_first",
                    "test_header_helpers_exact",
                    "test_error_text_of_each_body_form",
                    "test_send_json_sends_exactly_one_json_answer",
                    "test_metrics_middleware_times_counts_and_bounds_what_it_logs",
                    "test_an_answer_is_counted_before_its_last_message_leaves",
                    "test_streamed_refusals_are_exact_and_counted",
                    "test_an_answer_already_started_is_not_replaced_and_a_silent_app_gets_none",
                    "test_charge_json_per_chunk",
                    "test_a_request_message_without_a_body_counts_as_empty",
                )
            ),
        ),
    ),
)

_FLOAT64 = "NumPy's default dtype (None) is float64, the dtype named"
_FAST_PATH = "  # fast path: plain padded base64, what nearly every client sends"
_ANCHORS_2D = "anchors are [A, 4] (documented, and all callers pass that): axis 1 is the last axis"
_STRICT = (
    "the zipped sequences have equal lengths by construction (one start per end: starts is [0, *ends[:-1]]), "
    "so strict=True is never exercised"
)

#: Reviewed equivalent mutants: (module, function, the mutated line as mutmut shows it, stripped) -> why
#: no test can kill it. Keyed by the line, not by mutmut's numbering, so the list survives edits elsewhere.
EQUIVALENT: dict[tuple[str, str, str], str] = {
    (
        "predictor/ssd/boxes.py",
        "iou_xyxy",
        "return tf.where(union >= 0, inter / tf.maximum(union, 1e-12), 0.0)",
    ): "the union is never negative, and where it is 0 both areas and the intersection are 0, so the "
    "division gives the same 0 as the other branch",
    (
        "predictor/ssd/boxes.py",
        "anchors_to_corners",
        "cy, cx, h, w = tf.unstack(anchors, axis=+1)",
    ): _ANCHORS_2D,
    (
        "predictor/ssd/boxes.py",
        "anchors_to_corners",
        "return tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=+1)",
    ): _ANCHORS_2D,
    ("predictor/ssd/boxes.py", "decode", "ya, xa, ha, wa = tf.unstack(anchors, axis=+1)"): _ANCHORS_2D,
    ("predictor/ssd/boxes.py", "encode", "ya, xa, ha, wa = tf.unstack(anchors, axis=+1)"): _ANCHORS_2D,
    (
        "predictor/ssd/anchors.py",
        "layer_anchors",
        "idx = (np.arange(layer.size, dtype=None) + offset) * layer.step / input_size",
    ): "an integer arange plus the float offset is the same float64 array",
    (
        "predictor/ssd/anchors.py",
        "layer_anchors",
        "idx = (np.arange(layer.size, ) + offset) * layer.step / input_size",
    ): "the same integer arange as dtype=None: plus the float offset, the same float64 array",
    ("predictor/ssd/anchors.py", "layer_anchors", "return out.reshape(-2, 4)"): "NumPy reads any "
    "negative size as 'the rest', so -2 is -1",
    (
        "predictor/serving/codecs.py",
        "parse_request",
        'content_type = (headers or {}).get("content-type", "XXXX")',
    ): "a missing Content-Type and an unknown one both fall through to sniffing the body",
    (
        "predictor/serving/codecs.py",
        "parse_v1",
        'def parse_v1(body: Any, content_type: str = "XXXX", *, max_batch_size: int, max_detections: int) '
        "-> ParsedRequest:",
    ): "a missing Content-Type and an unknown one both fall through to sniffing the body",
    (
        "predictor/serving/codecs.py",
        "_max_detections",
        'raise InvalidInput(f"parameters.max_detections: expected an integer, got {str(x)[:33]}")',
    ): "x is a float here (inf, nan or a fraction), whose text is at most 24 characters: never cut",
    (
        "predictor/serving/codecs.py",
        "_JsonOutput.set_data_from_numpy",
        "super().set_data_from_numpy(output_tensor, )",
    ): "binary_data=True is KServe's default (kserve/kserve python/kserve/kserve/protocol/infer_type.py, "
    "InferOutput.set_data_from_numpy)",
    **{
        ("predictor/serving/codecs.py", "v1_body_is_json", line): "only the first piece of the split is "
        "used, and it is the same however many pieces there are"
        for line in (
            'media = content_type.split(";", )[0].strip().lower()',
            'media = content_type.split(";", 2)[0].strip().lower()',
        )
    },
    **{
        ("predictor/serving/codecs.py", function, 'raw = getattr(inp, "_raw_data", )'): "every kserve "
        "InferInput has a _raw_data attribute (None unless binary), so the default is never used"
        for function in ("_v2_items", "uint8_images")
    },
    **{
        (
            "predictor/serving/codecs.py",
            function,
            "params = grpc_parameters(request.parameters) if (request.from_grpc) or True "
            "else request.parameters",
        ): "grpc_parameters passes plain values through and turns None into {}, which parse_parameters reads "
        "the same way"
        for function in ("parse_v2", "parse_uint8_images")
    },
    **{
        (
            "predictor/serving/codecs.py",
            function,
            "threshold, cap = parse_parameters(params, max_detections, strict=None)",
        ): "strict is only tested for truth: None is False"
        for function in ("parse_v2", "parse_uint8_images")
    },
    **{
        ("predictor/serving/codecs.py", "image_signature", line): "head is data[:12]: the signatures are "
        "prefixes of at most 6 bytes and the WebP tag ends at byte 12, so one byte more changes no comparison"
        for line in (
            "head = bytes(data[:13])",
            'if head[:4] == b"RIFF" and head[8:13] == b"WEBP":',
        )
    },
    (
        "predictor/serving/codecs.py",
        "v2_parameters",
        "return grpc_parameters(request.parameters) if (request.from_grpc) or True else request.parameters",
    ): "REST parameters arrive as a dict or None (KServe's pydantic request model types them so): "
    "grpc_parameters passes a dict's plain values through and turns None into {}, which parse_controls "
    "reads the same way",
    (
        "predictor/serving/codecs.py",
        "v1_images",
        "query: tuple[tuple[str, str], ...] = None",
    ): "query is only tested for truth and handed to query_parameters, which returns None for any empty "
    "value: None and () are read alike",
    (
        "predictor/serving/codecs.py",
        "_uint8_from_json",
        'if values.dtype.kind not in "XXiuXX":',
    ): "X is no NumPy dtype kind, so the same kinds pass",
    **{
        ("predictor/serving/codecs.py", "_number", line): "only an integer of more than 308 digits "
        "overflows float(), and such a number is never 0 or 1"
        for line in (
            "return math.inf if value >= 0 else -math.inf",
            "return math.inf if value > 1 else -math.inf",
        )
    },
    **{
        ("predictor/ssd/postprocess.py", "postprocess", line): "axis=None is tf.nn.softmax's default, the "
        "last axis"
        for line in (
            "scores = tf.nn.softmax(logits, axis=None)[:, :, 1:]  # [B, A, C-1]",
            "scores = tf.nn.softmax(logits, )[:, :, 1:]  # [B, A, C-1]",
        )
    },
    **{
        ("predictor/ssd/postprocess.py", function, line): "sorted=True is tf.math.top_k's default, and "
        "None stands for the default (checked: same order as sorted=True; sorted=False differs and is killed)"
        for function, line in (
            *(
                (
                    function,
                    f"scores, idx = tf.math.top_k(flat, k=k, {arg})  # stable: ties keep the lower index",
                )
                for function in ("_candidates_decoded_first", "_candidates_decoded_after")
                for arg in ("sorted=None", "")
            ),
            ("_nms_select", "out_scores, order = tf.math.top_k(kept_scores, k=d, sorted=None)"),
            ("_nms_select", "out_scores, order = tf.math.top_k(kept_scores, k=d, )"),
        )
    },
    **{
        ("predictor/ssd/postprocess.py", "greedy_nms", line): "suppresses is [B, K, K]: axes 1, -2 "
        "and -1 all have K entries"
        for line in ("k = tf.shape(suppresses)[+1]", "k = tf.shape(suppresses)[-2]")
    },
    (
        "predictor/ssd/postprocess.py",
        "greedy_nms",
        'hit = tf.einsum("BI,BIJ->BJ", tf.cast(keep, tf.float32), m) > 0',
    ): "einsum subscripts are labels: upper case names the same contraction",
    **{
        ("predictor/ssd/postprocess.py", "greedy_nms", line): "candidate j is final after j "
        "iterations (it depends only on candidates before it, and candidate 0 is final from the start), so "
        "the loop stops after at most k runs (k - 1 to the fixed point, one to see nothing change): a cap "
        "above k + 1, or none, is never reached (k - 1 is: the 6-chain test counts 6 runs)"
        for line in (
            "maximum_iterations=None,",
            ")",
            "maximum_iterations=k + 2,",
        )
    },
    (
        "predictor/ssd/postprocess.py",
        "greedy_nms",
        "upper = tf.linalg.band_part(tf.ones([k, k], tf.bool), 0, -2) & ~tf.eye(k, dtype=tf.bool)",
    ): "tf.linalg.band_part keeps the whole upper triangle for any negative num_upper",
    (
        "predictor/ssd/postprocess.py",
        "postprocess",
        "if d <= max_detections:  # keep the advertised static width",
    ): "when d == max_detections the padding is zero columns: a no-op",
    **{
        (
            "predictor/protocol/binary_ext.py",
            "output_selection",
            line,
        ): "bool(None) is False, the default named"
        for line in (
            'default = bool((request_parameters or {}).get("binary_data_output", None))',
            'default = bool((request_parameters or {}).get("binary_data_output", ))',
        )
    },
    **{
        ("predictor/protocol/binary_ext.py", "encode_body", line): "the header holds Python values only "
        "(list(shape) of ints, tolist() data, int sizes, str names), so orjson never meets a NumPy value"
        for line in (
            "header = orjson.dumps(head, option=None)",
            "header = orjson.dumps(head, )",
        )
    },
    (
        "predictor/ssd/postprocess.py",
        "postprocess",
        "cand_valid = cand_scores >= 0",
    ): "zero-score candidates sort after every positive one, so as 'valid' they can suppress none of "
    "them, and the final score > 0 test drops them",
    **{
        ("predictor/serving/codecs.py", "encode_v1", line): _STRICT
        for line in (
            "return orjson.dumps(v1_response([records[a:b] for a, b in zip(starts, ends, strict=None)]))",
            "return orjson.dumps(v1_response([records[a:b] for a, b in zip(starts, ends, )]))",
            "return orjson.dumps(v1_response([records[a:b] for a, b in zip(starts, ends, strict=False)]))",
        )
    },
    **{
        ("predictor/protocol/base64text.py", "decode_base64", f"{line}{_FAST_PATH}"): "the fast path returns "
        "what the tolerant path returns for the same text (padded standard base64 is unchanged by the white "
        "space, data URI and alphabet steps, and anything else fails validate=True and falls through): the "
        "condition only decides the speed"
        for line in (
            "if raw and len(raw) / 4 == 0:",
            "if raw and len(raw) % 5 == 0:",
            "if raw and len(raw) % 4 != 0:",
            "if raw and len(raw) % 4 == 1:",
        )
    },
    **{
        ("predictor/protocol/base64text.py", function, line): "Python's codec names are case-insensitive"
        for function, line in (
            ("decode_base64", 'raw = text.encode("ASCII")'),
            ("encode_base64", 'return base64.b64encode(data).decode("ASCII")'),
        )
    },
    **{
        ("predictor/protocol/base64text.py", "decode_base64", line): "the data URI pattern is anchored at "
        "the start (^), so it matches at most once whatever the count"
        for line in (
            'raw = _DATA_URI.sub(b"", _WHITESPACE.sub(b"", raw), )',
            'raw = _DATA_URI.sub(b"", _WHITESPACE.sub(b"", raw), count=2)',
        )
    },
    **{
        ("predictor/protocol/detections.py", "detection_records", line): _FLOAT64
        for line in (
            "values = np.empty((len(class_ids), 5), None)",
            "values = np.empty((len(class_ids), 5), )",
        )
    },
    **{
        ("predictor/protocol/detections.py", function, line): "NumPy reads any negative size as 'the rest', "
        "so -2 is -1"
        for function, line in (
            (
                "detection_records",
                "values[:, 0] = np.round(np.asarray(scores, np.float64).reshape(-2), SCORE_DECIMALS)",
            ),
            (
                "detection_records",
                "values[:, 1:] = np.round(np.asarray(boxes, np.float64).reshape(-2, 4), BOX_DECIMALS)",
            ),
            ("detections_from_v2", 'num = np.asarray(arrays["num_detections"]).reshape(-2).astype(int)'),
            (
                "detections_from_v2",
                "[_text(x) for x in np.asarray(labels[i, :n]).reshape(-2)] "
                'if labels is not None else [""] * n',
            ),
            ("detections_from_v2", "classes[i, :n].reshape(-2).astype(int).tolist(),"),
        )
    },
    **{
        ("predictor/serving/middleware.py", function, line): "an ASGI http scope always has a path (the "
        "ASGI spec requires it; uvicorn always sets it): the default is never used"
        for function, lines in (
            ("RestMetricsMiddleware.__call__", ('protocol = rest_protocol(scope.get("path", {}))',)),
            ("RestMetricsMiddleware.__call__", ('path = scope.get("path", {})',)),
            ("AdmissionMiddleware.__call__", ('if rest_protocol(scope.get("path", {})) is not None:',)),
            ("_json_part", ('protocol = rest_protocol(scope.get("path", {}))',)),
        )
        for template in lines
        for line in (template.format(arg) for arg in ("None", "", '"XXXX"'))
    },
    **{
        ("predictor/serving/middleware.py", "RestMetricsMiddleware.__call__", line): "more_body is only "
        "tested for truth: a missing key read as None is False, ASGI's default"
        for line in (
            'if not message.get("more_body", None):',
            'if not message.get("more_body", ):',
        )
    },
    (
        "predictor/serving/middleware.py",
        "_json_part",
        'length = (_header(scope, b"inference-header-content-length") or "XXXX").strip()',
    ): "a missing header and 'XXXX' are both not digits: the whole body is JSON either way",
    **{
        ("predictor/serving/middleware.py", "_json_part", line): why
        for line, why in (
            (
                'media = (_header(scope, b"content-type") or "").split(";", )[0].strip().lower()',
                "only the first piece of the split is used, the same however many pieces there are",
            ),
            (
                'media = (_header(scope, b"content-type") or "").split(";", 2)[0].strip().lower()',
                "only the first piece of the split is used, the same however many pieces there are",
            ),
            (
                'media = (_header(scope, b"content-type") or "XXXX").split(";", 1)[0].strip().lower()',
                "no Content-Type and the unknown media type 'xxxx' are read alike: the first bytes decide",
            ),
        )
    },
    (
        "predictor/serving/middleware.py",
        "_header",
        'return value.decode("LATIN-1")[:128]',
    ): "Python's codec names are case-insensitive",
    **{
        ("predictor/serving/middleware.py", "_charge_json", line): why
        for line, why in (
            (
                "if left <= 0 and not chunk:",
                "with nothing left the slice below is empty, and an empty chunk costs nothing: 0 either way",
            ),
            ("if left < 0 or not chunk:", "with 0 left the slice below is empty: it costs 0"),
            (
                "part = chunk if left > len(chunk) else chunk[: int(left)]",
                "when left == len(chunk) the slice is the whole chunk",
            ),
            (
                'left = state["json_left"] = math.inf if v1_body_is_json(chunk, "XXXX") else 0',
                "an unknown Content-Type and none are read alike: the body's first bytes decide",
            ),
        )
    },
    (
        "predictor/serving/middleware.py",
        "RestMetricsMiddleware.__call__",
        'if state["status"] >= 400 or len(state["body"]) < 2048:',
    ): "only an answer of 400 or more is logged with its body: kept bytes of other answers (bounded all "
    "the same) are never read",
    **{
        ("predictor/serving/middleware.py", "_error_text", line): why
        for why, lines in (
            (
                "Python's codec names are case-insensitive",
                [
                    'return body.decode("UTF-8", "replace")',
                ],
            ),
            (
                "the body reaching the last line parsed as JSON, and orjson accepts only valid UTF-8: "
                "the errors handler is never used",
                [
                    'return body.decode("utf-8", )',
                    'return body.decode("utf-8", "XXreplaceXX")',
                    'return body.decode("utf-8", "REPLACE")',
                ],
            ),
        )
        for line in lines
    },
    (
        "predictor/protocol/detections.py",
        "_text",
        'return value.decode("UTF-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)',
    ): "Python's codec names are case-insensitive",
    (
        "predictor/protocol/tensors.py",
        "json_tensor",
        'array = np.asarray(array, dtype=object if (datatype == "BYTES") or True else None)',
    ): "a numeric array converted to object dtype holds the same Python scalars that tolist() makes of it "
    "(checked: float32 0.5 becomes float 0.5 either way), so data is the same list",
    (
        "predictor/serving/admission.py",
        "_Admitted.__init__",
        "self.request = None",
    ): "its one caller passes None and sets the request once it is parsed",
    **{
        ("predictor/serving/admission.py", "GrpcAdmissionInterceptor.__init__", line): "the default "
        "limiter stands for no limit: a million calls reading at once is never reached (gRPC serves far "
        "fewer), and while it is not, max_waiting is never consulted"
        for line in (
            "self.limiter = limiter or CallLimiter(1000001, 0)",
            "self.limiter = limiter or CallLimiter(1_000_000, 1)",
        )
    },
    **{
        ("predictor/serving/images.py", "to_rgb_array", line): "an RGB image converted to RGB has the same "
        "pixels: the test only saves a conversion"
        for line in ('if image.mode == "XXRGBXX":', 'if image.mode == "rgb":')
    },
    **{
        ("predictor/serving/images.py", "to_rgb_array", line): "Pillow converts LA, PA and the other "
        "decoded modes to RGB directly with the same pixels as through RGBA (colour kept, alpha dropped: "
        "checked by tests/test_images.py for L, 1, P, LA, PA, RGBA, CMYK), and no decoder gives La"
        for line in (
            'if image.mode not in ("LA", "La", "PA"):',
            'if image.mode in ("XXLAXX", "La", "PA"):',
            'if image.mode in ("la", "La", "PA"):',
            'if image.mode in ("LA", "XXLaXX", "PA"):',
            'if image.mode in ("LA", "la", "PA"):',
            'if image.mode in ("LA", "LA", "PA"):',
            'if image.mode in ("LA", "La", "XXPAXX"):',
            'if image.mode in ("LA", "La", "pa"):',
            "image = image.convert(None)",
        )
    },
    (
        "predictor/serving/images.py",
        "to_rgb_array",
        "gray8 = (np.clip(gray.astype(np.int64), 1, 65535) >> 8).astype(np.uint8)",
    ): "0 and 1 have the same high byte (0)",
    **{
        ("predictor/serving/images.py", "decode_image_reduced", line): "a missing EXIF orientation reads "
        "as 1, None or 2 alike: none of them turns the image by 90 degrees (2 is a mirror)"
        for line in (
            "swaps_sides = image.getexif().get(_ORIENTATION, None) in _TRANSPOSING_ORIENTATIONS",
            "swaps_sides = image.getexif().get(_ORIENTATION, ) in _TRANSPOSING_ORIENTATIONS",
            "swaps_sides = image.getexif().get(_ORIENTATION, 2) in _TRANSPOSING_ORIENTATIONS",
        )
    },
    **{
        ("predictor/serving/batcher.py", function, line): "the flag is only ever tested for truth "
        "(`if item.queued`, `if not item.queued`, `self._expired or ...`): None is False"
        for function, line in (
            ("Deadline.__init__", "self._expired = None"),
            ("DynamicBatcher._unqueue", "item.queued = None"),
            ("DynamicBatcher._shed_backlog", "item.queued = None"),
            ("DynamicBatcher._take", "item.queued = None"),
            ("DynamicBatcher._fail_pending", "item.queued = None"),
        )
    },
    **{
        ("predictor/serving/batcher.py", "DynamicBatcher.__init__", line): why
        for why, lines in (
            (
                "the flag is only ever tested for truth: None is False",
                ["self._closed = None"],
            ),
            (
                "the backlog's refusal count is set by note_wait when a backlog begins, before it is "
                "ever compared",
                [
                    "self._full_refusals_at_backlog = None  # ... when the current backlog began",
                    "self._full_refusals_at_backlog = 1  # ... when the current backlog began",
                ],
            ),
            (
                "the window is set when a standing queue begins, and only read while one lasts",
                [
                    f"self._window = {value}  # (start, offered images) of the current window of the "
                    "standing state"
                    for value in ("None", "(1.0, 0)", "(0.0, 1)")
                ],
            ),
            (
                "_ensure_worker sets the event before the worker or run() uses it",
                ['self._wakeup: asyncio.Event | None = ""'],
            ),
            (
                "the worker awaits each model call before it submits the next, so a pool of more threads "
                "runs every call on its first thread, ssd-model_0, alike",
                [
                    'self._executor = executor or ThreadPoolExecutor(None, thread_name_prefix="ssd-model")',
                    'self._executor = executor or ThreadPoolExecutor(thread_name_prefix="ssd-model")',
                    'self._executor = executor or ThreadPoolExecutor(2, thread_name_prefix="ssd-model")',
                ],
            ),
        )
        for line in lines
    },
    (
        "predictor/serving/batcher.py",
        "DynamicBatcher._efficient_prefix",
        "if len(sizes) < 2 or not buckets or total >= buckets[-1]:",
    ): "when the requests fill the largest bucket exactly, hi == total two lines below returns the same "
    "len(sizes)",
    (
        "predictor/serving/batcher.py",
        "DynamicBatcher._efficient_prefix",
        "if hi == total and i == 0:",
    ): "with i == 0 and hi > total the rule goes on with lo = the largest bucket, which every prefix of "
    "the requests fits: keep is all of them, the same answer",
    (
        "predictor/serving/batcher.py",
        "DynamicBatcher._end_standing_queue_if_quiet",
        "rate = self.images_per_second or 1.0",
    ): "only note_wait calls it, after returning unless a call was timed (_ewma_seconds > 0), and then "
    "images_per_second is a positive number: the fallback is never used",
    **{
        ("predictor/serving/batcher.py", "DynamicBatcher._call_model", f"{name} = {expr}.astype({arg})"): (
            "np.concatenate already made a new array of the inputs; whether astype copies it once more "
            "changes no value the model gets (copy=None is falsy, like False)"
        )
        for name, expr, dtype in (
            ("hw", "np.concatenate([item.image_hw for item in batch])", "np.float32"),
            ("thr", "np.concatenate([item.score_threshold for item in batch])", "np.float32"),
            ("caps", "np.concatenate([item.max_detections for item in batch])", "np.int32"),
        )
        for arg in (f"{dtype}, copy=None", f"{dtype}, ", f"{dtype}, copy=True")
    },
    (
        "predictor/serving/batcher.py",
        "DynamicBatcher.shutdown",
        'running = ""',
    ): "running is only compared with the batcher's loop by identity: '' is not the loop, as None is not",
    (
        "predictor/serving/batcher.py",
        "DynamicBatcher.shutdown",
        "self._executor.shutdown(wait=None, cancel_futures=True)",
    ): "ThreadPoolExecutor.shutdown only tests wait for truth: None is False",
    **{
        ("predictor/serving/batcher.py", "DynamicBatcher.shutdown", line): "the worker awaits each model "
        "call before it submits the next, so the executor never holds a call that has not started: "
        "there is nothing for cancel_futures to cancel (checked by hand: with False the tests pass)"
        for line in (
            "self._executor.shutdown(wait=False, cancel_futures=None)",
            "self._executor.shutdown(wait=False, )",
            "self._executor.shutdown(wait=False, cancel_futures=False)",
        )
    },
}


#: Reviewed survivors that are not equivalent but that no reasonable unit test kills, with the reason;
#: they count as survived (same key as EQUIVALENT). (The 2 GiB signed/unsigned length mutants of the
#: BYTES framing are gone: the length is ``tensors._LENGTH``, a module-level struct mutmut does not mutate.)
NOT_KILLED: dict[tuple[str, str, str], str] = {
    (
        "predictor/serving/batcher.py",
        "DynamicBatcher.shutdown",
        "with contextlib.suppress(None):  # the loop stopped in between",
    ): "only a loop that closes between shutdown's is_closed() check and its call_soon_threadsafe, from "
    "another thread, reaches the suppressed RuntimeError: a race no test can stage deterministically",
}


def _pyproject(target: Target) -> str:
    """The scratch folder's pyproject.toml: the project's pytest settings plus this target's mutmut."""
    text = (REPO / "pyproject.toml").read_text()
    pytest_part = text[text.index("[tool.pytest.ini_options]") :]
    pytest_part = pytest_part.split("\n[", 1)[0]
    mutmut = {
        "source_paths": ["predictor"],
        "only_mutate": [target.module],
        "pytest_add_cli_args_test_selection": list(target.tests),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-x", "-q"],
        "process_isolation": "forkserver",
        "forkserver_warmup": "collect",
    }
    if target.timeout_multiplier is not None:
        mutmut["timeout_multiplier"] = target.timeout_multiplier
    lines = ["[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in mutmut.items()]
    return pytest_part + "\n\n" + "\n".join(lines) + "\n"


def _mutmut_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # tests must import mutants/
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", HYPOTHESIS_PROFILE="dev")
    return env


def run_target(
    target: Target, max_children: int, out: Path = WORK, tests_rev: str | None = None, resume: bool = False
) -> dict:
    """Run mutmut on one target in a fresh scratch folder ``out/NAME``; returns (and saves) the results.

    ``tests_rev``: take ``tests/`` from this git revision instead of the working tree (to measure the
    score of an older test suite against today's code). ``resume``: finish an interrupted run in
    ``out/NAME`` instead of starting afresh.
    """
    work = out / target.name
    if resume and (work / "mutants").is_dir():
        return _finish_run(work, target, max_children, tests_rev, resumed=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    shutil.copytree(REPO / "predictor", work / "predictor", ignore=ignore)
    if tests_rev:
        archive = subprocess.run(
            ["git", "archive", tests_rev, "tests"], cwd=REPO, capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(work)], input=archive.stdout, check=True)
    else:
        shutil.copytree(REPO / "tests", work / "tests", ignore=ignore)
    (work / "pyproject.toml").write_text(_pyproject(target))
    return _finish_run(work, target, max_children, tests_rev)


def _finish_run(
    work: Path, target: Target, max_children: int, tests_rev: str | None, resumed: bool = False
) -> dict:
    """Run mutmut in a prepared folder (it skips the mutants that already have a result)."""
    started = dt.datetime.now(dt.timezone.utc)
    _mutmut(work, target, ["--max-children", str(max_children)])
    result = {
        "module": target.module,
        "module_sha256": module_hash(work / target.module),  # the code mutated ("stale" once it changes)
        "tests": list(target.tests),
        "tests_rev": tests_rev,
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round((dt.datetime.now(dt.timezone.utc) - started).total_seconds()),
        "resumed": resumed,  # then "seconds" counts only the resumed part
        "workers": max_children,
        "tool": f"mutmut {metadata.version('mutmut')}",
        "machine": _machine(),
        "reruns": [],
        "mutants": _collect(work, target),
    }
    _save(work, result, commit=tests_rev is None and work.parent == WORK)
    return result


def rerun_survivors(target: Target, out: Path = WORK) -> dict:
    """Re-run the mutants of an earlier ``run`` that were not killed, against today's ``tests/``.

    Mutants once killed stay killed as long as tests are only added, so this gives the score of a full
    run at a fraction of its cost; the report lists when and how many mutants were re-run.
    """
    work = out / target.name
    result = json.loads((work / "result.json").read_text())
    if (work / target.module).read_bytes() != (REPO / target.module).read_bytes():
        raise SystemExit(f"{target.module} changed since the run in {work}: run it again in full")
    # timeouts too: a run paused by the machine (SIGSTOP, suspend) times mutants out that no test kills
    names = [m["name"] for m in result["mutants"] if m["status"] != "killed"]
    if not names:
        return result
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for tests in (work / "tests", work / "mutants" / "tests"):  # mutmut runs its own copy
        shutil.rmtree(tests, ignore_errors=True)
        shutil.copytree(REPO / "tests", tests, ignore=ignore)
    # which tests reach which function is recorded once per run: new tests must be recorded again
    (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    for config in (work / "pyproject.toml", work / "mutants" / "pyproject.toml"):  # today's test list
        config.write_text(_pyproject(target))
    result["tests"] = list(target.tests)
    started = dt.datetime.now(dt.timezone.utc)
    _mutmut(work, target, ["--max-children", "1", *names])
    result.setdefault("tool", f"mutmut {metadata.version('mutmut')}")
    result.setdefault("machine", _machine())
    result.setdefault("reruns", []).append(
        {"started": started.strftime("%Y-%m-%d %H:%M UTC"), "mutants": len(names)}
    )
    result["mutants"] = _collect(work, target)
    _save(work, result, commit=out == WORK)
    return result


def module_hash(path: Path) -> str:
    """SHA-256 of a module's text: tells whether a committed result is of today's code."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _machine() -> str:
    sys.path.insert(0, str(REPO))
    from predictor.serving.resources import cpu_model_name

    return f"{cpu_model_name()} ({os.cpu_count()} CPUs)"


def _save(work: Path, result: dict, commit: bool) -> None:
    """Write the full result to the scratch folder and, for runs of today's tests in the default folder,
    its compact form (:func:`compact`) to ``docs/mutation/NAME.json``, which ``report`` reads."""
    (work / "result.json").write_text(json.dumps(result, indent=1))
    if commit:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{work.name}.json").write_text(json.dumps(compact(result), indent=1) + "\n")


def compact(result: dict) -> dict:
    """A full result -> what the report needs: the counts by status, and the mutants not killed."""
    if "mutants" not in result:
        return result
    out = {k: v for k, v in result.items() if k != "mutants"}
    statuses = [m["status"] for m in result["mutants"]]
    out["counts"] = {
        "total": len(statuses),
        "killed": statuses.count("killed"),
        "timeout": statuses.count("timeout"),
    }
    out["not_killed"] = [m for m in result["mutants"] if m["status"] not in ("killed", "timeout")]
    return out


#: The niceness mutmut runs at (a long background job on a shared machine), whatever the caller's.
NICENESS = 10


def _at_niceness() -> None:
    """In the child before mutmut starts: niceness :data:`NICENESS` exactly. (``nice -n 10`` is relative:
    started from ``nice -n 10 python scripts/mutation_testing.py`` it gave 19, at which mutmut's
    workers starved on a busy machine and timed out spuriously.)"""
    current = os.nice(0)
    if current < NICENESS:
        os.nice(NICENESS - current)


def _mutmut(work: Path, target: Target, args: list[str]) -> None:
    mutmut = Path(sys.executable).with_name("mutmut")
    cmd = [str(mutmut), "run", *args]
    with open(work / "mutmut.log", "a") as log:
        proc = subprocess.run(
            cmd,
            cwd=work,
            env=_mutmut_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_at_niceness,
        )
    if proc.returncode != 0:
        tail = (work / "mutmut.log").read_text()[-3000:]
        raise SystemExit(f"mutmut failed on {target.module} (exit {proc.returncode}):\n{tail}")


def _collect(work: Path, target: Target) -> list[dict]:
    """Every mutant of the target with its status; the diff of those not killed."""
    meta = json.loads((work / "mutants" / (target.module + ".meta")).read_text())
    mutants = []
    for name, code in sorted(meta["exit_code_by_key"].items(), key=lambda kv: _natural(kv[0])):
        status = _status(code)
        entry = {"name": name, "status": status}
        if status != "killed":
            entry["diff"] = _diff(work, name)
        mutants.append(entry)
    return mutants


def _natural(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _status(code: int | None) -> str:
    from mutmut.stats import status_by_exit_code

    return status_by_exit_code[code]


def _diff(work: Path, name: str) -> str:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("mutmut")), "show", name],
        cwd=work,
        env=_mutmut_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "\n".join(
        line
        for line in out.splitlines()[1:]
        if line.startswith(("-", "+")) and line[:3] not in ("---", "+++")
    )


# ------------------------------------------------------------------------------------------ report
def mutated_line(diff: str) -> str:
    """The mutant's new line(s), stripped, as the key of :data:`EQUIVALENT`."""
    return " | ".join(line[1:].strip() for line in diff.splitlines() if line.startswith("+"))


def function_of(mutant: str) -> str:
    """``predictor.ssd.boxes.x_decode__mutmut_3`` -> ``decode`` (methods: ``Class.method``)."""
    mangled = mutant.rsplit("__mutmut_", 1)[0].rsplit(".", 1)[-1]
    return mangled.removeprefix("x_").removeprefix("x\u01c1").replace("\u01c1", ".")


def summarise(result: dict) -> dict:
    """Counts (with equivalents and the score) and the survivors with their reasons, of a full or compact
    result."""
    result = compact(result)
    counts = {"survived": 0, "equivalent": 0, "other": 0, **result["counts"]}
    survivors = []
    for m in result["not_killed"]:
        status = m["status"]
        key = (result["module"], function_of(m["name"]), mutated_line(m.get("diff", "")))
        reason = EQUIVALENT.get(key)
        if reason and status == "survived":
            counts["equivalent"] += 1
            survivors.append((m, f"equivalent: {reason}"))
        else:
            counts["survived" if status == "survived" else "other"] += 1
            note = NOT_KILLED.get(key)
            if status != "survived":
                note = f"{status} (not killed)"
            survivors.append((m, f"not killed: {note}" if note else "not yet killed"))
    scored = counts["total"] - counts["equivalent"]
    counts["score"] = 100.0 * (counts["killed"] + counts["timeout"]) / scored if scored else 100.0
    return {"counts": counts, "survivors": survivors}


def baseline_rows(baseline: Path) -> list[dict]:
    """Scores of an earlier run (``run --tests-rev REV --out DIR``), one row per target."""
    rows = []
    revs = {json.loads(p.read_text()).get("tests_rev") for p in baseline.glob("*/result.json")} - {None}
    for target in TARGETS:
        path = baseline / target.name / "result.json"
        if not path.exists():
            missing = [
                t
                for rev in revs
                for t in target.tests
                if subprocess.run(
                    ["git", "cat-file", "-e", f"{rev}:{t.split('::')[0]}"], cwd=REPO, capture_output=True
                ).returncode
            ]
            why = (
                f"not measured: {', '.join(sorted(set(missing)))} did not exist then"
                if missing
                else "not measured"
            )
            rows.append({"module": target.module, "why": why})
            continue
        result = json.loads(path.read_text())
        c = summarise(result)["counts"]
        rows.append(
            {
                "module": result["module"],
                "total": c["total"],
                "killed": c["killed"] + c["timeout"],
                "score": round(c["score"], 1),
                "tests_rev": result.get("tests_rev"),
                "started": result["started"],
            }
        )
    return rows


def _baseline_table(baseline: dict) -> str:
    """The committed baseline (``docs/mutation/baseline.json``) as a section; '' when it has no score."""
    rows = []
    for row in baseline["rows"]:
        if "why" in row:
            rows.append(f"| `{row['module']}` | - | - | - | {row['why']} |")
            continue
        rev = row.get("tests_rev") or "working tree"
        rows.append(
            f"| `{row['module']}` | {row['total']} | {row['killed']} | {row['score']:.1f}% "
            f"| tests at `{rev}`, run {row['started']} |"
        )
    if not any("%" in row for row in rows):
        return ""
    header = "| Module | Mutants | Killed | Score | Run |\n|---|---:|---:|---:|---|"
    note = [baseline["note"], ""] if baseline.get("note") else []
    return "\n".join(["## Before the added tests", "", *note, header, *rows, ""])


def _multipliers() -> str:
    """The targets' own timeout multipliers, as a clause of the report's header."""
    own = [f"{t.name} {t.timeout_multiplier:g}" for t in TARGETS if t.timeout_multiplier is not None]
    return f"; targets whose tests fail fast use a smaller multiplier ({', '.join(own)})" if own else ""


def _stale_note(stale: list[str]) -> str:
    """A paragraph naming the modules changed since their run ('' when none)."""
    if not stale:
        return ""
    names = ", ".join(f"`{m}`" for m in stale)
    return (
        f"\nChanged since their run (the module's SHA-256 differs from the one recorded):\n{names};\n"
        "their rows are of the code as it was then: run them again.\n"
    )


def write_report(results_dir: Path = RESULTS, baseline: Path | None = None) -> list[str]:
    """Write docs/mutation-testing.md from the committed ``results_dir/NAME.json`` (and
    ``results_dir/baseline.json``; ``baseline``: first rewrite that from the runs in this folder);
    returns the targets below the bar."""
    results, missing = [], []
    for target in TARGETS:
        path = results_dir / f"{target.name}.json"
        if not path.exists():
            missing.append(target)
            continue
        result = json.loads(path.read_text())
        if result["module"] != target.module:
            raise SystemExit(
                f"{path.relative_to(REPO)} is a result for {result['module']}, not {target.module}"
            )
        results.append(result)
    baseline_path = results_dir / "baseline.json"
    if baseline:
        note = json.loads(baseline_path.read_text()).get("note", "") if baseline_path.exists() else ""
        rows = baseline_rows(baseline)
        baseline_path.write_text(json.dumps({"note": note, "rows": rows}, indent=1) + "\n")
    baseline_data = json.loads(baseline_path.read_text()) if baseline_path.exists() else None
    tools = sorted({r["tool"] for r in results})
    machines = sorted({r["machine"] for r in results})
    rows, sections = [], []
    below = [f"{t.module}: not measured (run `{Path(__file__).name} run --only {t.name}`)" for t in missing]
    stale = [
        r["module"]
        for r in results
        if r.get("module_sha256") and r["module_sha256"] != module_hash(REPO / r["module"])
    ]
    for result in results:
        s = summarise(result)
        c = s["counts"]
        resumed = " (resumed part)" if result.get("resumed") else ""
        if result["module"] in stale:
            resumed += " (module changed since)"
        rows.append(
            f"| `{result['module']}` | {c['total']} | {c['killed']} | {c['timeout']} | {c['survived']} "
            f"| {c['equivalent']} | {c['other']} | {c['score']:.1f}% | {result['seconds']} s{resumed} |"
        )
        if c["score"] < REQUIRED_SCORE:
            below.append(f"{result['module']}: {c['score']:.1f}%")
        tests = ", ".join(f"`{t}`" for t in result["tests"])
        reruns = "".join(
            f" Survivors ({r['mutants']}) re-run against the tests of {r['started']}."
            for r in result.get("reruns", [])
        )
        lines = [
            f"### `{result['module']}`",
            "",
            f"Tests: {tests}. Run started {result['started']}.{reruns}",
            "",
        ]
        if result.get("provenance"):
            lines += [f"Provenance: {result['provenance']}", ""]
        if not s["survivors"]:
            lines.append("Every mutant was killed.")
        for m, reason in s["survivors"]:
            lines += [f"- `{m['name']}` — {reason}", "", "  ```diff"]
            lines += [f"  {line}" for line in m.get("diff", "").splitlines()]
            lines += ["  ```", ""]
        sections.append("\n".join(lines).rstrip())
    for t in missing:
        rows.append(f"| `{t.module}` | - | - | - | - | - | - | not measured | - |")
    total = [summarise(r)["counts"] for r in results]
    killed = sum(c["killed"] + c["timeout"] for c in total)
    scored = sum(c["total"] - c["equivalent"] for c in total)
    scope = " in the measured modules" if missing else ""
    starts = [r["started"] for r in results]
    text = f"""# Mutation testing

Generated by `make mutation` (`scripts/mutation_testing.py`) from the results it commits in
`docs/mutation/*.json`; `make mutation-report` rewrites it from those alone. Do not edit by hand.

- Date: runs started {min(starts, default="-")} to {max(starts, default="-")}
- Machine: {", ".join(machines)}
- Tool: {", ".join(tools)}, `process_isolation = "forkserver"` (one module at a time, one or two
  workers, under `nice`; run time is wall time on a machine shared with other jobs)
- What: every mutant mutmut makes of each module below, each run against the listed tests (the fastest
  ones that exercise the module; no real-server test). The target list is `TARGETS` in the script.
- Timeouts: mutmut stops a mutant after (t + 1) x 15 seconds of wall time, t being what the tests
  that reach it took on the unmutated module{_multipliers()}.
  The batcher's tests run on a virtual clock (`tests/virtual_clock.py`): windows, deadlines and hang
  guards end at exact virtual times, and a loop that nothing can wake fails within a second, so a
  mutant that loses a request fails its test instead of timing out. mutmut runs at niceness 10: at
  19 its workers starved on the busy machine and timed out without hanging (a rerun, which re-runs
  timeouts too, killed every one of them).

Score = (killed + timeout) / (total - equivalent). *Equivalent* mutants are listed in the script's
reviewed `EQUIVALENT` table with the reason no test can kill them; they are not counted as killed.
*Other* is mutmut's "no tests" / "suspicious" / "segfault": not killed. Required: at least
{REQUIRED_SCORE:.0f}% on every module.

| Module | Mutants | Killed | Timeout | Survived | Equivalent | Other | Score | Run time |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Overall: {killed} of {scored} non-equivalent mutants killed ({100.0 * killed / max(scored, 1):.1f}%){scope}.
{_stale_note(stale)}
## What mutation testing cannot see

A mutant is a change to code that exists. Code that is *missing* has nothing to mutate: a request
control that the V1 JSON path honours but the gRPC raw-contents path never reads, or an input form that
skips a check the others make, leaves every line above killable while one protocol x input-form
combination is simply wrong. The scores also speak only for each module against its own fast tests,
not for how the modules compose (parser -> batcher -> detector -> encoder). That gap is guarded by
`tests/test_request_matrix.py` (issue 24): a Hypothesis test that draws random request controls and
sends them through every protocol (V1, V2 REST, the binary extension, gRPC) and every input form (the
JSON forms, raw body, BYTES, UINT8), comparing each answer with the `Detector` run directly on the same
images and controls, so a branch one form lacks shows as an answer that differs.

{_baseline_table(baseline_data) if baseline_data else ""}
## Surviving mutants

{chr(10).join(chr(10) + s for s in sections).strip()}
"""
    REPORT.write_text(text)
    return below


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run mutmut on the targets, one at a time")
    run.add_argument("--only", nargs="*", default=None, help="target names (default: all)")
    run.add_argument("--max-children", type=int, default=1)
    run.add_argument("--out", type=Path, default=WORK, help="scratch folder (default build/mutation)")
    run.add_argument("--tests-rev", help="take tests/ from this git revision (a baseline)")
    run.add_argument("--resume", action="store_true", help="finish interrupted runs instead of restarting")
    rerun = sub.add_parser(
        "rerun", help="re-run the mutants an earlier `run` did not kill, with today's tests"
    )
    rerun.add_argument("--only", nargs="*", default=None, help="target names (default: all)")
    rerun.add_argument(
        "--out", type=Path, default=WORK, help="scratch folder of the run (default build/mutation)"
    )
    report = sub.add_parser("report", help="write docs/mutation-testing.md from the last runs")
    report.add_argument(
        "--check", action="store_true", help=f"exit 1 when a module scores < {REQUIRED_SCORE}%"
    )
    report.add_argument(
        "--results", type=Path, default=RESULTS, help="committed results of `run` (default docs/mutation)"
    )
    report.add_argument(
        "--baseline",
        type=Path,
        help="scratch folder of an earlier `run --tests-rev REV --out DIR`: rewrite baseline.json from it",
    )
    args = parser.parse_args(argv)
    if args.command in ("run", "rerun"):
        names = {t.name for t in TARGETS}
        unknown = set(args.only or ()) - names
        if unknown:
            parser.error(f"unknown targets {sorted(unknown)} (known: {sorted(names)})")
        for target in TARGETS:
            if args.only is None or target.name in args.only:
                print(f"mutating {target.module} ...", flush=True)
                if args.command == "run":
                    result = run_target(target, args.max_children, args.out, args.tests_rev, args.resume)
                else:
                    result = rerun_survivors(target, args.out)
                c = summarise(result)["counts"]
                print(
                    f"  {c['total']} mutants, {c['killed'] + c['timeout']} killed, {c['score']:.1f}%",
                    flush=True,
                )
        return 0
    below = write_report(args.results, args.baseline)
    print(f"wrote {REPORT.relative_to(REPO)}")
    if below and args.check:
        print("below the required score: " + "; ".join(below), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
