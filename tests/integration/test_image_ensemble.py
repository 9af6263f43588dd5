"""Encoded images through Triton: the preprocess model, the `<classifier>_image` ensemble
and the `<router>_image` one on the real tritonserver, called with plain tritonclient as any
user would call them."""

from __future__ import annotations

import asyncio
import io
import queue
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.client import AsyncLifeloopClient, ClientError, LifeloopClient
from lifeloop.errors import RepositoryError
from lifeloop.preprocessing import PIXELS
from lifeloop.repository import read_config, write_config
from lifeloop.repository.config import DynamicBatching
from lifeloop.retrain import ImageFolder, TrainResult
from lifeloop.serve import TritonServer
from lifeloop.serve.ensemble import install_image_ensemble
from lifeloop.serve.install import install_router
from lifeloop.serve.preprocess import ImageLimits
from lifeloop.serve.sampling import KeepRule
from lifeloop.store import Store, blobs
from tests.conftest import publish_trained
from tests.integration.conftest import server_config

LIMITS = ImageLimits(max_bytes=60_000, max_pixels=1_000_000)


@pytest.fixture(scope="module")
def image_repo(tmp_path_factory: pytest.TempPathFactory, trained: TrainResult, held_out) -> Path:
    repo = tmp_path_factory.mktemp("images") / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits", samples=held_out[0])
    install_router(repo, "digits", keep=KeepRule.everything())
    install_image_ensemble(repo, "digits", limits=LIMITS)
    install_image_ensemble(repo, "digits", limits=LIMITS, router="router")
    # A long queue delay so that requests sent together are decoded in one batch.
    config = read_config(repo / "preprocess")
    assert config is not None
    slow = DynamicBatching(max_queue_delay_us=300_000)
    write_config(repo, replace(config, dynamic_batching=slow))
    return repo


@pytest.fixture(scope="module")
def image_server(image_repo: Path) -> Iterator[TritonServer]:
    with TritonServer(server_config(image_repo)) as running:
        yield running


@pytest.fixture
def client(image_server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(image_server.grpc_url.removeprefix("grpc://")) as c:
        yield c


def spread(digits: ImageFolder, n: int) -> list:
    """n held-out samples across every class (the held-out list is grouped by class)."""
    _, held = digits.split()
    return held[:: max(1, len(held) // n)][:n]


def encode(path: Path, fmt: str) -> bytes:
    with Image.open(path) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        return buffer.getvalue()


def image_request(data: list[bytes]) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("IMAGE", [len(data), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(data, dtype=np.object_).reshape(-1, 1))
    return [tensor]


def top(client, model: str, inputs, count: int) -> np.ndarray:
    wanted = [grpcclient.InferRequestedOutput("logits", class_count=count)]
    return client.infer(model, inputs, outputs=wanted).as_numpy("logits")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_encoded_images_get_the_classifiers_labels_and_scores(
    client, digits: ImageFolder, trained: TrainResult, fmt: str
) -> None:
    samples = spread(digits, 24)
    data = [encode(sample.path, fmt) for sample in samples]
    labels = trained.checkpoint.labels
    pre = trained.checkpoint.preprocessing.with_kind(PIXELS)  # what the version takes

    answers = top(client, "digits_image", image_request(data), count=3)
    assert answers.shape == (len(samples), 3)
    # The same bytes decoded here and sent as tensors to the classifier: the same scores.
    x = np.stack([pre.to_array(Image.open(io.BytesIO(d))) for d in data])
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    direct = top(client, "digits", [tensor], count=3)
    assert answers.tolist() == direct.tolist()

    right = 0
    for row, sample in zip(answers, samples, strict=True):
        entries = [item.decode().split(":") for item in row]
        scores = [float(score) for score, _, _ in entries]
        assert scores == sorted(scores, reverse=True)
        assert all(labels[int(index)] == label for _, index, label in entries)
        right += labels.index(entries[0][2]) == sample.label
    assert right >= 0.85 * len(samples)

    raw = client.infer("digits_image", image_request(data[:4])).as_numpy("logits")
    assert raw.shape == (4, len(labels)) and raw.dtype == np.float32


def test_a_bad_image_fails_only_its_own_request(client, digits: ImageFolder) -> None:
    good = [encode(sample.path, "PNG") for sample in spread(digits, 6)]
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    too_many_bytes = buffer.getvalue()
    buffer = io.BytesIO()
    Image.new("L", (1500, 1500)).save(buffer, format="PNG")
    too_many_pixels = buffer.getvalue()
    plan: list[tuple[bytes, str | None]] = [
        (good[0], None),
        (b"\x89PNG not really", "cannot be decoded as JPEG/PNG"),
        (good[1], None),
        (good[2][: len(good[2]) // 2], "cannot be decoded as JPEG/PNG"),
        (good[3], None),
        (too_many_bytes, "over the limit of 60,000"),
        (good[4], None),
        (too_many_pixels, "2,250,000 pixels, over the limit of 1,000,000"),
        (b"", "the image is empty"),
        (good[5], None),
    ]
    before = _preprocess_counts(client)
    results: queue.Queue = queue.Queue()
    for i, (data, _) in enumerate(plan):
        client.async_infer(
            "digits_image",
            image_request([data]),
            callback=lambda result, error, i=i: results.put((i, result, error)),
        )
    answered = {i: (result, error) for i, result, error in (results.get(timeout=60) for _ in plan)}
    for i, (_, expected) in enumerate(plan):
        result, error = answered[i]
        if expected:
            assert result is None and expected in error.message()
            assert "image 0 of the request: the image" in error.message()
        else:
            assert error is None, error
            assert result.as_numpy("logits").shape == (1, 10)
    after = _preprocess_counts(client)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == len(plan)
    assert executions < inferences  # they shared batches, and only the bad ones failed


def _preprocess_counts(client) -> tuple[int, int]:
    stats = client.get_inference_statistics("preprocess", as_json=True)["model_stats"][0]
    # JSON from protobuf leaves out counts that are zero.
    success = int(stats["inference_stats"]["success"].get("count", 0))
    failed = int(stats["inference_stats"]["fail"].get("count", 0))
    return success + failed, int(stats.get("execution_count", 0))


def test_classifier_answers_class_count_with_its_labels(client, served_held_out, trained) -> None:
    x, y = served_held_out
    tensor = grpcclient.InferInput("input", [8, *x.shape[1:]], "FP32")
    tensor.set_data_from_numpy(x[:8])
    answers = top(client, "digits", [tensor], count=1)
    labels = trained.checkpoint.labels
    got = [item[0].decode().split(":") for item in answers]
    assert [label for _, _, label in got] == [labels[int(index)] for _, index, _ in got]
    right = [labels.index(label) == truth for (_, _, label), truth in zip(got, y[:8], strict=True)]
    assert sum(right) >= 6


def test_through_a_router_encoded_images_are_logged_and_kept_as_sent(
    client, image_repo: Path, image_server: TritonServer, digits: ImageFolder
) -> None:
    samples = spread(digits, 8)
    data = [encode(s.path, "PNG") for s in samples[:4]] + [
        encode(s.path, "JPEG") for s in samples[4:]
    ]
    wanted = [grpcclient.InferRequestedOutput(n) for n in ("logits", "request_id", "model_version")]
    routed = client.infer("router_image", image_request(data), outputs=wanted)
    direct = client.infer("digits_image", image_request(data)).as_numpy("logits")
    assert np.array_equal(routed.as_numpy("logits"), direct)
    assert routed.as_numpy("model_version").ravel().tolist() == [1] * len(data)
    ids = [row[0].decode() for row in routed.as_numpy("request_id")]
    tensor_bytes = int(np.prod(read_config(image_repo / "digits").inputs[0].dims)) * 4
    with Store.for_repository(image_repo) as store:
        rows = [store.prediction(rid) for rid in ids]
    files = set()
    for row, sent in zip(rows, data, strict=True):
        assert row is not None and (row["kept_as"], row["kept_by"]) == ("encoded", "uniform")
        assert blobs.load_encoded(row["blob"], row["blob_row"]) == sent  # byte for byte
        assert row["content_hash"] == blobs.encoded_hash(sent)
        files.add(row["blob"])
    kept = sum(Path(f).stat().st_size for f in files)
    assert kept * 10 < tensor_bytes * len(data)  # what the decoded float32 would have taken

    # The lifeloop client through the routed ensemble: request ids, and feedback on them.
    with LifeloopClient(image_server.grpc_url, model="router_image") as lifeloop:
        info = lifeloop.model_info()
        assert info.takes_encoded_images and info.routes_to == "digits"
        answers = lifeloop.classify([samples[0].path, samples[1].path])
        assert all(a.request_id for a in answers)
        assert lifeloop.feedback([a.request_id for a in answers], ["0", "1"]) == 2
        # Called directly with tensors, the router keeps the decoded batch, as before.
        x = [np.asarray(Image.open(samples[0].path).convert("L"))]
    with LifeloopClient(image_server.grpc_url, model="router") as direct_client:
        plain = direct_client.classify(x)
    with Store.for_repository(image_repo) as store:
        row = store.prediction(plain[0].request_id)
    assert row is not None and row["kept_as"] == "uint8"


def test_an_old_router_is_refused_with_the_fix(tmp_path: Path, trained: TrainResult) -> None:
    repo = tmp_path / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits")
    install_router(repo, "digits")
    config = read_config(repo / "router")
    assert config is not None  # as `router init` wrote it before it took IMAGE
    write_config(repo, replace(config, inputs=config.inputs[:1]))
    with pytest.raises(RepositoryError, match="router 'router' was set up before it kept"):
        install_image_ensemble(repo, "digits", router="router")
    with pytest.raises(RepositoryError, match="'nope' in .* is not a router in front of 'digits'"):
        install_image_ensemble(repo, "digits", router="nope")


def test_image_init_refuses_a_model_without_versions_and_bad_formats(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["image", "init", "-r", str(tmp_path / "repo"), "-m", "nope"])
    assert result.exit_code == 1
    assert "model 'nope' has no published version" in result.stderr
    result = runner.invoke(app, ["image", "init", "-r", str(tmp_path), "--formats", "JPG"])
    assert result.exit_code == 1
    assert "image formats ['JPG'] are not formats Pillow reads" in result.stderr


def test_lifeloop_clients_send_files_bytes_and_images_to_the_ensemble(
    image_server: TritonServer, digits: ImageFolder
) -> None:
    samples = spread(digits, 6)
    inputs: list = [samples[0].path, str(samples[1].path), encode(samples[2].path, "JPEG")]
    inputs += [Image.open(samples[3].path), np.asarray(Image.open(samples[4].path))]
    inputs += [samples[5].path.read_bytes()]
    with LifeloopClient(image_server.grpc_url, model="digits_image") as client:
        info = client.model_info()
        assert info.takes_encoded_images and info.routes_to is None
        answers = client.classify(inputs, top_k=2)
        # The same images, preprocessed here and sent to the classifier as tensors.
        direct = client.classify(inputs, top_k=2, model="digits")
    assert [a.labels for a in answers] == [d.labels for d in direct]
    assert np.allclose([a.scores for a in answers[:2]], [d.scores for d in direct[:2]])
    assert all(a.model == "digits_image" for a in answers)

    async def through_async() -> list:
        async with AsyncLifeloopClient(image_server.http_url, "http") as client:
            return await client.classify(inputs[:2], top_k=1, model="digits_image")

    assert [a.label for a in asyncio.run(through_async())] == [d.label for d in direct[:2]]
    with (
        LifeloopClient(image_server.grpc_url, model="digits_image") as client,
        pytest.raises(ClientError, match="cannot read image file"),
    ):
        client.classify([Path("no/such.png")])
