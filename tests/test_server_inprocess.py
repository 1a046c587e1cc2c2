"""``SSDPredictor`` in-process (KServe's pipeline without the HTTP layer): loading, readiness,
tracing, time limits and load shedding."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import orjson
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse
from serving_fixtures import b64, encode_image, forge_png_size

from predictor.serving.batcher import Overloaded, RequestTimeout
from predictor.serving.errors import NotReady, status_of
from predictor.serving.model import SSDPredictor
from predictor.serving.options import ServingOptions


@pytest.fixture(scope="module")
def loaded(random_tiny_model_dir):
    model = SSDPredictor("ssd", ServingOptions(model_dir=str(random_tiny_model_dir), max_batch_size=4))
    assert not model.ready
    model.start()  # KServe calls this at registration: it must not claim readiness
    assert not model.ready
    assert model.load() is True
    yield model
    model.close()


@pytest.fixture(scope="module")
def png(shapes_images) -> str:
    return b64(encode_image(shapes_images[1], "PNG"))


def predict_v1(model: SSDPredictor, instances: list, **params) -> dict:
    body = {"instances": instances, **({"parameters": params} if params else {})}
    response, headers = asyncio.run(model(body, headers={"content-type": "application/json"}))
    assert headers["content-type"] == "application/json"
    return orjson.loads(response)


def test_load_warms_up_every_bucket_with_one_trace(loaded):
    detector = loaded.detector
    assert detector.buckets == (1, 2, 4)
    assert detector.trace_count == 1  # the batch dimension is open: one trace serves every bucket
    assert loaded.warmup_seconds is not None
    assert loaded.load() is True and detector.trace_count == 1  # idempotent


def test_no_retracing_while_serving(loaded, png):
    async def burst():
        calls = [loaded({"instances": [png] * n}, headers={}) for n in (1, 2, 3, 4, 1, 3)]
        return await asyncio.gather(*calls)

    before = loaded.detector.trace_count
    responses = asyncio.run(burst())
    assert [len(orjson.loads(r)["predictions"]) for r, _ in responses] == [1, 2, 3, 4, 1, 3]
    uncapped = predict_v1(loaded, [png] * 3)["predictions"]
    capped = predict_v1(loaded, [png] * 3, max_detections=2)["predictions"]
    assert all(len(dets) > 2 for dets in uncapped), "the random model should find more than 2 boxes"
    assert capped == [dets[:2] for dets in uncapped]  # the cap keeps the two best, per image
    assert loaded.detector.trace_count == before


def test_v2_and_grpc_requests_in_process(loaded, shapes_images, png):
    rest = InferRequest("ssd", [InferInput("images", [1], "BYTES", data=[png])], request_id="x")
    response, _ = asyncio.run(loaded(rest, headers={}))
    assert isinstance(response, InferResponse) and response.id == "x"
    raw = encode_image(shapes_images[1], "PNG")
    grpc_like = InferRequest("ssd", [InferInput("images", [1], "BYTES", data=[raw])], from_grpc=True)
    grpc_response, _ = asyncio.run(loaded(grpc_like, headers={}))
    over_grpc = {o.name: o.as_numpy() for o in InferResponse.from_grpc(grpc_response.to_grpc()).outputs}
    over_rest = {o.name: np.asarray(o.data) for o in response.outputs}
    assert (
        sorted(over_grpc)
        == sorted(over_rest)
        == sorted(
            ["num_detections", "detection_boxes", "detection_scores", "detection_classes", "detection_labels"]
        )
    )
    direct = loaded.detector.detect([shapes_images[1]])[0]
    n = len(direct.scores)
    assert n > 0 and over_grpc["num_detections"].tolist() == over_rest["num_detections"].tolist() == [n]
    for outputs in (over_grpc, over_rest):
        np.testing.assert_allclose(outputs["detection_boxes"].reshape(1, n, 4)[0], direct.boxes, atol=1e-3)
        np.testing.assert_allclose(outputs["detection_scores"].reshape(1, n)[0], direct.scores, atol=1e-6)
        assert outputs["detection_classes"].reshape(1, n)[0].tolist() == direct.classes.tolist()
        labels = [v.decode() if isinstance(v, bytes) else v for v in outputs["detection_labels"].reshape(-1)]
        assert labels == [loaded.detector.class_names[c] for c in direct.classes]


def test_a_model_that_is_not_loaded_answers_503(random_tiny_model_dir, png):
    model = SSDPredictor("ssd", ServingOptions(model_dir=str(random_tiny_model_dir)))
    with pytest.raises(NotReady) as info:
        asyncio.run(model({"instances": [png]}, headers={}))
    assert status_of(info.value) == 503 and "not ready" in info.value.reason
    model.close()


def test_request_time_limit_gives_503(loaded, random_tiny_model_dir, png):
    options = ServingOptions(model_dir=str(random_tiny_model_dir), max_batch_size=4, request_timeout_s=1e-4)
    hurried = SSDPredictor("ssd", options, detector=loaded.detector)
    assert hurried.load()
    with pytest.raises(RequestTimeout, match="request_timeout_s") as info:
        asyncio.run(hurried({"instances": [png] * 4}, headers={}))
    assert status_of(info.value) == 503
    assert hurried.batcher.admitted_images == 0 and hurried.batcher.queued_images == 0
    hurried.close()


def test_queue_bound_sheds_load_and_recovers(loaded, random_tiny_model_dir, png):
    options = ServingOptions(model_dir=str(random_tiny_model_dir), max_batch_size=4, max_queue_images=2)
    small = SSDPredictor("ssd", options, detector=loaded.detector)
    assert small.load()

    async def burst():
        calls = [small({"instances": [png, png]}, headers={}) for _ in range(6)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(burst())
    shed = [r for r in results if isinstance(r, BaseException)]
    assert shed and all(isinstance(r, Overloaded) and status_of(r) == 503 for r in shed)
    assert len(shed) < len(results)
    response, _ = asyncio.run(small({"instances": [png]}, headers={}))
    assert len(orjson.loads(response)["predictions"]) == 1
    small.close()


class Overlapping:
    """Wraps a batcher's ``run_batch``: counts the calls running at once (``most``); a call waits (at
    most ``wait_s`` real seconds, once) until a second one has entered, so two calls surely overlap
    when the batcher allows two."""

    def __init__(self, run_batch, wait_s: float = 10.0) -> None:
        self.run_batch, self.wait_s = run_batch, wait_s
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.second = threading.Event()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            if self.now >= 2:
                self.second.set()
        try:
            if not self.second.wait(self.wait_s):
                self.second.set()  # no second call came: wait no more (``most`` stays 1)
            return self.run_batch(*args, **kwargs)
        finally:
            with self.lock:
                self.now -= 1


def test_two_model_calls_in_flight_answer_what_one_does(loaded, random_tiny_model_dir, shapes_images, png):
    """``--model_calls_in_flight 2``: two model threads on the one detector, the batcher allowed two
    calls; a burst of requests of 1-3 images, during which two calls ran at once, gets the same
    detections as with one call in flight."""
    options = ServingOptions(model_dir=str(random_tiny_model_dir), max_batch_size=4, model_calls_in_flight=2)
    twice = SSDPredictor("ssd", options, detector=loaded.detector)
    assert twice.load()
    assert twice.batcher.max_calls_in_flight == 2 and twice._model_thread._max_workers == 2
    overlapping = Overlapping(twice.batcher._run_batch)
    twice.batcher._run_batch = overlapping
    other = b64(encode_image(shapes_images[0], "PNG"))
    bodies = [{"instances": [png, other, png][i % 2 : i % 2 + 1 + i % 3]} for i in range(8)]

    async def burst(model: SSDPredictor) -> list:
        answers = await asyncio.gather(*(model(body, headers={}) for body in bodies))
        return [orjson.loads(response)["predictions"] for response, _ in answers]

    try:
        assert asyncio.run(burst(twice)) == asyncio.run(burst(loaded))
        assert overlapping.most == 2  # two model calls did run at once
    finally:
        twice.close()


def test_by_default_a_cpu_server_runs_two_calls_of_a_fast_model_at_once(random_tiny_model_dir):
    """``--model_calls_in_flight`` 0 (the default) on this CPU with the tiny model (warm-up calls of a
    few ms): two calls in flight, two model threads."""
    model = SSDPredictor("ssd", ServingOptions(model_dir=str(random_tiny_model_dir), max_batch_size=4))
    try:
        assert model.load()
        assert model.batcher.max_calls_in_flight == 2 and model._model_thread._max_workers == 2
    finally:
        model.close()


def test_decode_failures_name_the_instance(loaded, png):
    with pytest.raises(InvalidInput, match=r"instances\[2\]: invalid base64"):
        asyncio.run(loaded({"instances": [png, png, "###"]}, headers={}))
    bomb = b64(forge_png_size(encode_image(np.zeros((2, 2, 3), np.uint8)), 9000, 9000))
    with pytest.raises(InvalidInput, match=r"instances\[0\]: image has too many pixels"):
        asyncio.run(loaded({"instances": [bomb]}, headers={}))
