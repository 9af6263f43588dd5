import numpy as np
import pytest
from PIL import Image

from lifeloop.client import ClientError, ModelInfo, split_url, to_samples
from lifeloop.client._codec import decode
from lifeloop.preprocessing import Preprocessing


def info(labels=("a", "b", "c")) -> ModelInfo:
    return ModelInfo(
        name="m",
        input_name="input",
        input_dims=(3, 8, 8),
        input_dtype="FP32",
        output_name="logits",
        max_batch_size=4,
        labels=labels,
        preprocessing=Preprocessing(size=8, mean=(0.5,) * 3, std=(0.5,) * 3),
    )


def test_decode_returns_softmax_top_k_with_labels() -> None:
    logits = np.array([[0.0, 2.0, 1.0], [5.0, 0.0, 0.0]], np.float32)
    first, second = decode(logits, info=info(), version=3, top_k=2)
    assert first.labels == ("b", "c") and first.indices == (1, 2) and first.version == 3
    assert sum(decode(logits, info=info(), version=3, top_k=3)[0].scores) == pytest.approx(1.0)
    assert second.label == "a" and second.scores[0] > 0.98


def test_classes_beyond_the_known_labels_are_named_by_index() -> None:
    answer = decode(np.array([[0.0, 0.0, 0.0, 9.0]], np.float32), info=info(), version=1, top_k=1)[
        0
    ]
    assert answer.labels == ("3",)


def test_images_pixels_and_preprocessed_arrays_become_one_batch() -> None:
    pixels = np.full((8, 8, 3), 255, np.uint8)
    ready = np.zeros((2, 3, 8, 8), np.float32)
    batch = to_samples([Image.fromarray(pixels), pixels, ready], info())
    assert batch.shape == (4, 3, 8, 8) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], 1.0)  # (1 - 0.5) / 0.5
    with pytest.raises(ClientError, match="classify\\(\\) got no inputs"):
        to_samples([], info())
    with pytest.raises(ClientError, match="not a readable image"):
        to_samples(["/nonexistent.png"], info())


@pytest.mark.parametrize(
    ("url", "protocol", "expected"),
    [
        ("grpc://h:1", None, ("h:1", "grpc")),
        ("http://h:2/", None, ("h:2", "http")),
        ("h", "http", ("h:8000", "http")),
        ("h", None, ("h:8001", "grpc")),
    ],
)
def test_urls_accept_schemes_and_default_ports(url, protocol, expected) -> None:
    assert split_url(url, protocol) == expected


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ClientError, match="use http:// or grpc://"):
        split_url("ftp://h:1")
