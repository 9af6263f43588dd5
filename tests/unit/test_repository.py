import json
from dataclasses import replace
from pathlib import Path

import pytest

from lifeloop.contract import CLASSIFIER_PARAM, LABELS_PARAM
from lifeloop.repository import (
    ManifestMismatchError,
    RepositoryError,
    TensorInfo,
    VersionDraft,
    VersionExistsError,
    classifier_config,
    list_versions,
    publish,
    read_config,
    verify,
)
from lifeloop.repository.config import DataType, EnsembleStep, ModelConfig, TensorSpec
from lifeloop.repository.manifest import Manifest
from lifeloop.repository.publish import write_config


def draft(labels=("a", "b"), shape=(3, 8, 8)) -> VersionDraft:
    return VersionDraft(
        format="onnx",
        labels=tuple(labels),
        input=TensorInfo(name="input", shape=shape),
        output_name="logits",
        preprocessing={"size": shape[-1]},
        parity={"max_abs_diff": 1e-6, "top1_agreement": 1.0},
    )


def config(shape=(3, 8, 8)):
    return classifier_config("clf", input_name="input", input_shape=shape, output_name="logits")


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not really onnx, the publisher does not care" * 10)
    return path


def test_publish_takes_the_next_number_and_writes_a_complete_manifest(
    tmp_path: Path, artifact: Path
) -> None:
    repo = tmp_path / "repo"
    first = publish(repo, config(), {"model.onnx": artifact}, draft())
    second = publish(repo, config(), {"model.onnx": artifact}, draft())
    assert (first.version, second.version) == (1, 2)
    manifest = verify(second.path)
    assert manifest.version == 2 and manifest.model == "clf"
    assert (
        manifest.files[0].path == "model.onnx" and manifest.files[0].size == artifact.stat().st_size
    )
    assert manifest.labels == ("a", "b") and manifest.created_at
    assert sorted(p.name for p in (repo / "clf").iterdir() if not p.name.startswith(".")) == [
        "1",
        "2",
        "config.pbtxt",
        "labels.txt",
    ]
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_existing_version_number_is_refused_and_nothing_is_left_behind(
    tmp_path: Path, artifact: Path
) -> None:
    repo = tmp_path / "repo"
    publish(repo, config(), {"model.onnx": artifact}, draft(), version=3)
    with pytest.raises(VersionExistsError, match="version 3 of model 'clf' already exists") as e:
        publish(repo, config(), {"model.onnx": artifact}, draft(), version=3)
    assert (e.value.model, e.value.version) == ("clf", 3)  # for callers that act on it
    assert sorted(p.name for p in (repo / "clf").iterdir() if p.is_dir()) == ["3"]


def test_failed_publish_leaves_no_staging_folder_and_no_version(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    with pytest.raises(FileNotFoundError):
        publish(repo, config(), {"model.onnx": tmp_path / "missing.onnx"}, draft())
    assert [p.name for p in (repo / "clf").iterdir() if p.is_dir()] == []


def test_repository_path_that_is_a_file_is_refused(tmp_path: Path, artifact: Path) -> None:
    not_a_dir = tmp_path / "repo"
    not_a_dir.write_text("x")
    with pytest.raises(
        RepositoryError, match=f"repository path {not_a_dir} is a file; pass a folder"
    ):
        publish(not_a_dir, config(), {"model.onnx": artifact}, draft())
    assert not_a_dir.read_text() == "x"


def test_labels_may_only_grow_at_the_end(tmp_path: Path, artifact: Path) -> None:
    repo = tmp_path / "repo"
    publish(repo, config(), {"model.onnx": artifact}, draft(labels=("a", "b")))
    publish(repo, config(), {"model.onnx": artifact}, draft(labels=("a", "b", "c")))
    assert json.loads(read_config(repo / "clf").parameters[LABELS_PARAM]) == ["a", "b", "c"]
    # An older, smaller version keeps the union of labels in the config.
    publish(repo, config(), {"model.onnx": artifact}, draft(labels=("a", "b")))
    assert json.loads(read_config(repo / "clf").parameters[LABELS_PARAM]) == ["a", "b", "c"]
    with pytest.raises(RepositoryError, match="reorder the model's labels"):
        publish(repo, config(), {"model.onnx": artifact}, draft(labels=("b", "a")))
    assert (repo / "clf" / "labels.txt").read_text() == "a\nb\nc\n"


def test_a_model_fronting_the_classifier_follows_its_labels(tmp_path: Path, artifact) -> None:
    """An image ensemble's label file gets the classes a new version adds; a router, which
    names the classifier but has no label file, is left alone."""
    repo = tmp_path / "repo"
    publish(repo, config(), {"model.onnx": artifact}, draft(labels=("a", "b")))
    logits = TensorSpec(name="logits", data_type=DataType.FP32, dims=(-1,))
    image = TensorSpec(name="IMAGE", data_type=DataType.STRING, dims=(1,))
    front = dict(max_batch_size=8, inputs=(image,), dynamic_batching=None)
    ensemble = ModelConfig(
        name="clf_image",
        backend="",
        platform="ensemble",
        instance_groups=(),
        outputs=(replace(logits, label_filename="labels.txt"),),
        parameters={CLASSIFIER_PARAM: "clf", LABELS_PARAM: '["a","b"]'},
        ensemble_steps=(EnsembleStep(model="clf", input_map={}, output_map={}),),
        **front,
    )
    router = ModelConfig(
        name="router",
        backend="python",
        outputs=(logits,),
        parameters={CLASSIFIER_PARAM: "clf"},
        **front,
    )
    for made in (ensemble, router):
        write_config(repo, made)
    publish(repo, config(), {"model.onnx": artifact}, draft(labels=("a", "b", "c")))
    assert (repo / "clf_image" / "labels.txt").read_text() == "a\nb\nc\n"
    assert json.loads(read_config(repo / "clf_image").parameters[LABELS_PARAM]) == ["a", "b", "c"]
    assert read_config(repo / "router") == router
    assert not (repo / "router" / "labels.txt").exists()


def test_version_with_another_input_shape_is_refused(tmp_path: Path, artifact: Path) -> None:
    repo = tmp_path / "repo"
    publish(repo, config(), {"model.onnx": artifact}, draft())
    with pytest.raises(RepositoryError, match=r"input input \[3, 16, 16\] does not match"):
        publish(repo, config(), {"model.onnx": artifact}, draft(shape=(3, 16, 16)))
    assert [p.name for p in (repo / "clf").iterdir() if p.is_dir()] == ["1"]


def test_verify_names_a_file_changed_after_publishing(tmp_path: Path, artifact: Path) -> None:
    published = publish(tmp_path / "repo", config(), {"model.onnx": artifact}, draft())
    with open(published.path / "model.onnx", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ManifestMismatchError, match="model.onnx does not match its manifest") as e:
        verify(published.path)
    assert (e.value.model, e.value.version) == (published.model, published.version)


def test_versions_lists_labels_parity_and_problems(tmp_path: Path, artifact: Path) -> None:
    repo = tmp_path / "repo"
    publish(repo, config(), {"model.onnx": artifact}, draft())
    (repo / "clf" / "2").mkdir()  # a folder someone copied in by hand, without a manifest
    rows = list_versions(repo, "clf")
    assert [(r.version, r.labels, r.parity_top1_agreement, r.state) for r in rows] == [
        (1, 2, 1.0, "-"),
        (2, 0, None, "-"),
    ]
    assert "manifest.json is missing" in rows[1].problem
    with pytest.raises(RepositoryError, match="model 'nope' is not in repository"):
        list_versions(repo, "nope")
