"""The SSD predictor's messages, as both the server and the client read and write them.

Requests: one encoded image per instance (V1 ``instances``, V2 one BYTES input, any name, metadata
name :data:`~predictor.protocol.wire.INPUT_NAME`) and optional ``parameters`` (:data:`PARAMETER_NAMES`).

Responses, one entry per image, boxes ``(xmin, ymin, xmax, ymax)`` in pixels of the original
(EXIF-oriented) image:

- V1: ``{"predictions": [[{label, class_id, score, xmin, ymin, xmax, ymax}, ...], ...]}``, sorted by
  score, scores rounded to :data:`SCORE_DECIMALS` decimals and coordinates to :data:`BOX_DECIMALS`
  (:func:`detection_records`).
- V2 (REST and gRPC): the tensors :data:`~predictor.protocol.wire.V2_OUTPUTS`, ``num_detections [N]``,
  ``detection_boxes [N, K, 4]``, ``detection_scores [N, K]``, ``detection_classes [N, K]``,
  ``detection_labels [N, K]``; rows past ``num_detections[i]`` are padding.

Every answer names the model version that computed it: the header
:data:`~predictor.protocol.wire.MODEL_VERSION_HEADER` on every REST response and in the initial metadata
of every gRPC call, and V2's ``model_version`` field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from predictor.protocol.errors import MalformedMessage
from predictor.protocol.json_body import excerpt

#: A detection as the V1 endpoint writes it (and the client reports every protocol's answers):
#: ``{"label": str, "class_id": int, "score": float, "xmin": float, "ymin": ..., "xmax": ..., "ymax": ...}``.
Detection = dict[str, Any]

#: The request ``parameters`` the predictor reads.
PARAMETER_NAMES = ("score_threshold", "max_detections", "nms_threshold", "classes")
SCORE_DECIMALS = 4
BOX_DECIMALS = 2
_REQUIRED_V2_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


def detection_records(
    labels: Sequence[str], class_ids: Sequence[int], scores: Any, boxes: Any
) -> list[Detection]:
    """Columns of detections (``scores [n]`` or ``[n, 1]``, ``boxes [n, 4]``) -> V1 dicts, the scores and
    coordinates rounded in float64. ``labels`` and ``class_ids`` are used as given (``str`` and ``int``).

    Raises:
      ValueError: the columns do not hold the same number ``n`` of detections.
    """
    values = np.empty((len(class_ids), 5), np.float64)
    values[:, 0] = np.round(np.asarray(scores, np.float64).reshape(-1), SCORE_DECIMALS)
    values[:, 1:] = np.round(np.asarray(boxes, np.float64).reshape(-1, 4), BOX_DECIMALS)
    return [
        {"label": lab, "class_id": c, "score": s, "xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1}
        for lab, c, (s, x0, y0, x1, y1) in zip(labels, class_ids, values.tolist(), strict=True)
    ]


def v1_response(per_image: Sequence[list[Detection]]) -> dict[str, list[list[Detection]]]:
    """The V1 response object of the detections of each image."""
    return {"predictions": list(per_image)}


def detections_from_v1(body: Any, n_images: int) -> list[list[Detection]]:
    """A V1 response -> detections per image, normalised by :func:`detection_records`.

    Raises:
      MalformedMessage: not ``n_images`` lists of predictions, or a detection without its fields.
    """
    predictions = body.get("predictions") if isinstance(body, dict) else None
    if not isinstance(predictions, list) or len(predictions) != n_images:
        raise MalformedMessage(f"predictions: expected a list of {n_images} lists, got {excerpt(body)}")
    out = []
    for i, dets in enumerate(predictions):
        try:
            out.append(
                detection_records(
                    [str(d.get("label", "")) for d in dets],
                    [int(d.get("class_id", 0)) for d in dets],
                    [d["score"] for d in dets],
                    [[d["xmin"], d["ymin"], d["xmax"], d["ymax"]] for d in dets],
                )
            )
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise MalformedMessage(f"predictions[{i}]: not detections ({e!r}): {excerpt(dets)}") from None
    return out


def detections_from_v2(arrays: Mapping[str, np.ndarray], n_images: int) -> list[list[Detection]]:
    """V2 output arrays (:data:`~predictor.protocol.wire.V2_OUTPUTS`; ``detection_labels`` may be
    missing) -> detections per image, normalised by :func:`detection_records`. As some servers shape
    them, ``num_detections`` may be ``[N, 1]`` and ``detection_scores``, ``detection_classes`` and
    ``detection_labels`` ``[N, K, 1]``.

    Raises:
      MalformedMessage: a required output missing, or ``num_detections`` not of ``n_images`` values.
    """
    missing = [name for name in _REQUIRED_V2_OUTPUTS if name not in arrays]
    if missing:
        raise MalformedMessage(f"outputs: missing {', '.join(missing)}")
    num = np.asarray(arrays["num_detections"]).reshape(-1).astype(int)
    if len(num) != n_images:
        raise MalformedMessage(f"num_detections: {len(num)} values for {n_images} images")
    classes = np.asarray(arrays["detection_classes"])
    labels = arrays.get("detection_labels")
    out = []
    for i, n in enumerate(num.tolist()):
        try:
            names = (
                [_text(x) for x in np.asarray(labels[i, :n]).reshape(-1)] if labels is not None else [""] * n
            )
            out.append(
                detection_records(
                    names,
                    classes[i, :n].reshape(-1).astype(int).tolist(),
                    arrays["detection_scores"][i, :n],
                    arrays["detection_boxes"][i, :n],
                )
            )
        except (IndexError, TypeError, ValueError) as e:
            raise MalformedMessage(f"image {i}: outputs do not hold {n} detections ({e})"[:300]) from None
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
