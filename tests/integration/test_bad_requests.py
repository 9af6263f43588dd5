"""Requests that are the caller's fault are answered INVALID_ARG (HTTP 400, gRPC
INVALID_ARGUMENT) by every lifeloop model, with a one-line message that carries no Python
object repr; a fault of the server's stays INTERNAL (HTTP 500, gRPC INTERNAL). Sent with plain
tritonclient over both protocols to the image ensemble's server and the learning loop's."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from lifeloop.repository.publish import version_numbers
from lifeloop.serve import TritonServer
from tests.integration import test_image_ensemble as image_tests
from tests.integration import test_loop as loop_tests

# The servers, shared with the modules that define them (each module gets its own instance).
image_repo = image_tests.image_repo
image_server = image_tests.image_server
loop_repo = loop_tests.loop_repo
loop_server = loop_tests.loop_server

PROTOCOLS = ["http", "grpc"]
STATUS = {
    "http": {"INVALID_ARG": "400", "INTERNAL": "500"},
    "grpc": {"INVALID_ARG": "StatusCode.INVALID_ARGUMENT", "INTERNAL": "StatusCode.INTERNAL"},
}
# `<_io.BytesIO object at 0x7f...>`; Triton's own `[request id: <id_unknown>]` is no repr.
PYTHON_REPR = re.compile(r"<[^<>]*\b(?:object|at 0x[0-9a-fA-F]+)\b[^<>]*>")


def refusal(
    server: TritonServer, protocol: str, model: str, inputs: dict[str, tuple[np.ndarray, str]]
) -> InferenceServerException:
    """The error `model` answers with `inputs` (name -> (array, Triton datatype))."""
    module = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    tensors = []
    for name, (array, datatype) in inputs.items():
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    with (
        module.InferenceServerClient(url.removeprefix("grpc://")) as client,
        pytest.raises(InferenceServerException) as refused,
    ):
        client.infer(model, tensors)
    return refused.value


def assert_refused(error: InferenceServerException, protocol: str, code: str, text: str) -> None:
    assert error.status() == STATUS[protocol][code], error
    message = error.message()
    assert text in message, message
    assert not PYTHON_REPR.search(message) and " at 0x" not in message, message
    assert "\n" not in message.strip(), message


def image(data: bytes) -> dict[str, tuple[np.ndarray, str]]:
    return {"IMAGE": (np.array([[data]], dtype=np.object_), "BYTES")}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_undecodable_image_is_invalid_arg(image_server, protocol: str) -> None:
    for data in (b"\x00 not an image", b"\x89PNG\r\n\x1a\n truncated"):
        error = refusal(image_server, protocol, "digits_image", image(data))
        assert_refused(error, protocol, "INVALID_ARG", "the image cannot be decoded as JPEG/PNG")
    # Base64 text of something that is no image says it was decoded first.
    error = refusal(image_server, protocol, "digits_image", image(b"bm90IGFuIGltYWdl"))
    assert_refused(error, protocol, "INVALID_ARG", "the image (base64-decoded) cannot be decoded")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_oversized_image_is_invalid_arg(image_server, protocol: str) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    error = refusal(image_server, protocol, "digits_image", image(buffer.getvalue()))
    assert_refused(error, protocol, "INVALID_ARG", "over the limit of 60,000")
    buffer = io.BytesIO()
    Image.new("L", (1500, 1500)).save(buffer, format="PNG")
    error = refusal(image_server, protocol, "digits_image", image(buffer.getvalue()))
    assert_refused(error, protocol, "INVALID_ARG", "2,250,000 pixels, over the limit of 1,000,000")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_unknown_request_id_in_feedback_is_invalid_arg(loop_server, protocol: str) -> None:
    ids = np.array([[b"nope"]], dtype=np.object_)
    labels = np.array([[b"1"]], dtype=np.object_)
    inputs = {"request_id": (ids, "BYTES"), "label": (labels, "BYTES")}
    error = refusal(loop_server, protocol, "feedback", inputs)
    assert_refused(error, protocol, "INVALID_ARG", "unknown request id 'nope'")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["digits", "router"])
def test_a_wrong_shaped_tensor_is_invalid_arg(
    image_server, loop_server, protocol: str, model: str
) -> None:
    # tritonserver checks the shape against the config before the model sees it (the
    # onnxruntime backend and the router would refuse it as INVALID_ARG too).
    server = image_server if model == "digits" else loop_server
    wrong = {"input": (np.zeros((1, 3, 5, 5), dtype=np.float32), "FP32")}
    error = refusal(server, protocol, model, wrong)
    assert_refused(error, protocol, "INVALID_ARG", "unexpected shape for input 'input'")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_version_without_its_manifest_is_the_servers_fault(
    image_repo: Path, image_server, protocol: str
) -> None:
    # A version folder that no publisher wrote (its manifest is missing): the preprocess
    # model cannot know the classifier's preprocessing, and the caller can change nothing.
    broken = image_repo / "digits" / str(version_numbers(image_repo / "digits")[-1] + 1)
    broken.mkdir()
    try:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, format="PNG")
        error = refusal(image_server, protocol, "digits_image", image(buffer.getvalue()))
    finally:
        broken.rmdir()
    assert_refused(error, protocol, "INTERNAL", "manifest.json is missing")
