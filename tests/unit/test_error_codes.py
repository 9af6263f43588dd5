"""Whose fault an error is, without Triton: the caller's mistakes (ImageError, RequestError,
FeedbackError) become INVALID_ARG, anything else INTERNAL, and no message carries a Python
object repr. A fake `pb` stands in for triton_python_backend_utils; the integration tests
(test_bad_requests.py) check the same codes over HTTP and gRPC."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lifeloop.errors import FeedbackError, ImageError, RequestError, StoreUnavailable
from lifeloop.preprocessing import Preprocessing
from lifeloop.serve.ort_runner import BatchRunner
from lifeloop.serve.preprocess import ImageLimits, Preprocessor
from lifeloop.serve.responses import error_for, invalid, unavailable
from tests.unit.test_ort_runner import batch, version_dir  # noqa: F401 (a fixture)

PLAIN = Preprocessing(size=2, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


@dataclass
class TritonError:
    message: str
    code: str = "INTERNAL"

    INTERNAL = "INTERNAL"
    INVALID_ARG = "INVALID_ARG"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class Response:
    output_tensors: list[Any] | None = None
    error: TritonError | None = None


class Input:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def as_numpy(self) -> np.ndarray:
        return self.array


class FakePb:
    TritonError = TritonError
    InferenceResponse = Response

    @staticmethod
    def Tensor(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
        return name, value

    @staticmethod
    def get_input_tensor_by_name(request: dict[str, np.ndarray], name: str) -> Input:
        return Input(request[name])


class OldPb:
    """A python backend before 23.04: TritonError takes a message only."""

    class TritonError:
        def __init__(self, message: str) -> None:
            self.message = message


@pytest.mark.parametrize(
    "exc", [ImageError("bad image"), RequestError("bad shape"), FeedbackError("unknown id")]
)
def test_the_callers_mistakes_are_invalid_arg(exc: Exception) -> None:
    assert error_for(FakePb, exc) == TritonError(str(exc), "INVALID_ARG")


@pytest.mark.parametrize(
    "exc", [RuntimeError("onnxruntime failed"), KeyError("bug"), StoreUnavailable("slow")]
)
def test_anything_else_is_internal(exc: Exception) -> None:
    assert error_for(FakePb, exc).code == "INTERNAL"


def test_messages_lose_object_reprs_and_old_backends_get_the_message_alone() -> None:
    error = invalid(FakePb, "cannot identify image file <_io.BytesIO object at 0x7f3a2c1b9e40>")
    assert error == TritonError("cannot identify image file", "INVALID_ARG")
    assert error_for(FakePb, RuntimeError()).message == "RuntimeError"
    assert unavailable(OldPb, "busy").message == "busy"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def preprocessor(tmp_path: Path, pre: Any = PLAIN) -> Preprocessor:
    (tmp_path / "digits").mkdir(exist_ok=True)
    model = Preprocessor(FakePb, tmp_path / "digits", "input", ImageLimits(max_bytes=10_000))
    if pre is not None:
        model.newest.current = lambda: pre  # type: ignore[method-assign]
    return model


def images(*data: bytes) -> dict[str, np.ndarray]:
    return {"IMAGE": np.array([[d] for d in data], dtype=np.object_)}


def test_preprocess_answers_a_bad_image_invalid_arg_and_its_batch_mates(tmp_path: Path) -> None:
    good, garbage, too_large = images(png()), images(b"\x00garbage"), images(b"\x89" * 10_001)
    answers = preprocessor(tmp_path).execute([good, garbage, too_large, good])
    assert [a.error.code if a.error else None for a in answers] == [
        None,
        "INVALID_ARG",
        "INVALID_ARG",
        None,
    ]
    assert answers[1].error.message == (
        "image 0 of the request: the image cannot be decoded as JPEG/PNG (cannot identify "
        "image file)"
    )
    assert "over the limit of 10,000" in answers[2].error.message
    assert answers[0].output_tensors[0][1].shape == (1, 3, 2, 2)


def test_preprocess_without_a_version_is_the_servers_fault(tmp_path: Path) -> None:
    answers = preprocessor(tmp_path, pre=None).execute([images(png())])
    assert answers[0].error == TritonError(
        "preprocess: model 'digits' has no published version", "INTERNAL"
    )


def test_a_preprocessing_bug_fails_only_its_request_as_internal(tmp_path: Path) -> None:
    class Broken:
        calls = 0

        def to_array(self, image: Image.Image) -> np.ndarray:
            Broken.calls += 1
            if Broken.calls == 1:
                raise RuntimeError(f"bug in {object()!r}")
            return PLAIN.to_array(image)

    answers = preprocessor(tmp_path, Broken()).execute([images(png()), images(png())])
    assert answers[0].error is not None and answers[0].error.code == "INTERNAL"
    assert "<" not in answers[0].error.message and "bug in" in answers[0].error.message
    assert answers[1].error is None


def test_onnxruntime_calling_an_argument_invalid_is_the_callers(
    version_dir: Path,  # noqa: F811
) -> None:
    runner = BatchRunner(version_dir, _loose_config())
    # The config lets any height and width through; the ONNX model takes 8x8 only.
    [refused] = runner.run([{"input": np.zeros((1, 3, 9, 9), np.float32)}])
    assert isinstance(refused, RequestError)
    assert str(refused).startswith("onnxruntime refused this request: ")


def test_onnxruntime_failing_on_a_fitting_request_is_the_servers(
    version_dir: Path,  # noqa: F811
) -> None:
    runner = BatchRunner(version_dir, _loose_config())

    class Failing:
        def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            raise MemoryError("out of memory")

    runner.session = Failing()
    [failed] = runner.run([{"input": batch(1, 0)}])
    assert type(failed) is RuntimeError
    assert str(failed) == "onnxruntime failed on this request: out of memory"
    assert error_for(FakePb, failed).code == "INTERNAL"


def _loose_config() -> dict[str, Any]:
    return {
        "max_batch_size": 8,
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": ["3", "-1", "-1"]}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": ["5"]}],
    }
