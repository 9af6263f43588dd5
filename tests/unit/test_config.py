from dataclasses import replace
from pathlib import Path

import pytest

from lifeloop.repository import RepositoryError, classifier_config, parse, render
from lifeloop.repository.config import (
    DataType,
    DynamicBatching,
    EnsembleStep,
    InstanceGroup,
    ModelConfig,
    TensorSpec,
    VersionPolicy,
    Warmup,
    WarmupInput,
    standard_warmup,
)

TENSORS = dict(
    inputs=(TensorSpec(name="x", data_type=DataType.FP32, dims=(3,)),),
    outputs=(TensorSpec(name="y", data_type=DataType.FP32, dims=(-1,)),),
)

GOLDEN = Path(__file__).parents[1] / "golden"


@pytest.mark.parametrize("name", ["classifier.pbtxt", "pinned_no_batching.pbtxt"])
def test_golden_files_parse_and_render_back_identically(name: str) -> None:
    text = (GOLDEN / name).read_text()
    assert render(parse(text)) == text


def test_default_classifier_config_renders_the_golden_file() -> None:
    config = classifier_config(
        "classifier",
        input_name="input",
        input_shape=(3, 32, 32),
        output_name="logits",
        instances=2,
        intra_op_threads=1,
    )
    assert render(config) == (GOLDEN / "classifier.pbtxt").read_text()


def test_render_parse_render_is_identical_for_every_policy_kind() -> None:
    tensors = dict(
        inputs=(TensorSpec(name="x", data_type=DataType.FP32, dims=(3, 8, 8)),),
        outputs=(TensorSpec(name="y", data_type=DataType.FP32, dims=(-1,)),),
    )
    for policy in (
        VersionPolicy(latest=3),
        VersionPolicy(latest=None, all=True),
        VersionPolicy(latest=None, specific=(2, 5)),
    ):
        config = ModelConfig(
            name="m",
            version_policy=policy,
            dynamic_batching=DynamicBatching(max_queue_delay_us=250, preferred_batch_sizes=(4, 8)),
            instance_groups=(InstanceGroup(count=3),),
            parameters={"b": "2", "a": "1"},
            **tensors,
        )
        text = render(config)
        assert parse(text) == config
        assert render(parse(text)) == text


def test_parse_error_names_the_file() -> None:
    with pytest.raises(
        RepositoryError, match="models/m/config.pbtxt is not a valid Triton model config"
    ):
        parse("name: 'm'\nmax_batch_size: lots\n", source="models/m/config.pbtxt")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: VersionPolicy(latest=None), "exactly one of latest, specific or all"),
        (lambda: InstanceGroup(count=0), "instance_group count must be >= 1, got 0"),
        (lambda: DynamicBatching(max_queue_delay_us=-1), "max_queue_delay_us must be >= 0"),
        (lambda: TensorSpec(name="x", data_type=DataType.FP32, dims=(0,)), "tensor 'x' has dims"),
        (
            lambda: classifier_config("a/b", input_name="i", input_shape=(3,), output_name="o"),
            "not usable as a folder",
        ),
    ],
)
def test_invalid_fields_are_named_when_built(build, message: str) -> None:
    with pytest.raises(RepositoryError, match=message):
        build()


def test_ensemble_and_warmup_render_and_parse_back() -> None:
    image = TensorSpec(name="IMAGE", data_type=DataType.STRING, dims=(1,))
    logits = TensorSpec(name="logits", data_type=DataType.FP32, dims=(-1,), label_filename="l.txt")
    ensemble = ModelConfig(
        name="clf_image",
        backend="",
        platform="ensemble",
        max_batch_size=16,
        inputs=(image,),
        outputs=(logits,),
        dynamic_batching=None,
        instance_groups=(),
        ensemble_steps=(
            EnsembleStep(model="pre", input_map={"IMAGE": "IMAGE"}, output_map={"x": "t"}),
            EnsembleStep(model="clf", input_map={"x": "t"}, output_map={"logits": "logits"}),
        ),
    )
    text = render(ensemble)
    assert 'platform: "ensemble"' in text
    assert "backend" not in text and "instance_group" not in text
    assert 'label_filename: "l.txt"' in text
    assert parse(text) == ensemble
    warm = WarmupInput(data_type=DataType.STRING, dims=(1,), source="image.bin")
    pre = ModelConfig(
        name="pre",
        backend="python",
        max_batch_size=16,
        inputs=(image,),
        outputs=(TensorSpec(name="x", data_type=DataType.FP32, dims=(3, 8, 8)),),
        warmup=(Warmup(name="w", batch_size=16, inputs={"IMAGE": warm}),),
    )
    text = render(pre)
    assert 'input_data_file: "image.bin"' in text
    assert parse(text) == pre


def test_classifier_warms_at_batch_one_and_at_max_batch() -> None:
    config = classifier_config(
        "c", input_name="i", input_shape=(3, 8, 8), output_name="o", max_batch_size=48
    )
    assert [w.batch_size for w in config.warmup] == [1, 48]
    assert all(w.inputs["i"].dims == (3, 8, 8) for w in config.warmup)
    assert [
        w.batch_size
        for w in standard_warmup(
            replace(config, max_batch_size=0, warmup=(), dynamic_batching=None)
        )
    ] == [1]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: ModelConfig(
                name="e", platform="ensemble", backend="", dynamic_batching=None, **TENSORS
            ),
            "an ensemble needs platform 'ensemble' and at least one step",
        ),
        (
            lambda: ModelConfig(
                name="e",
                platform="ensemble",
                backend="",
                dynamic_batching=None,
                ensemble_steps=(EnsembleStep(model="m", input_map={}, output_map={}),),
                **TENSORS,
            ),
            "an ensemble has no backend, instance groups or warmup",
        ),
        (
            lambda: replace(
                classifier_config("c", input_name="i", input_shape=(3,), output_name="o"),
                max_batch_size=8,
            ),
            r"warmup \['batch_32'\] exceed max_batch_size 8",
        ),
    ],
)
def test_inconsistent_ensembles_and_warmups_are_refused(build, message: str) -> None:
    with pytest.raises(RepositoryError, match=message):
        build()
