from pathlib import Path

import pytest

from lifeloop.repository import RepositoryError, classifier_config, parse, render
from lifeloop.repository.config import (
    DataType,
    DynamicBatching,
    InstanceGroup,
    ModelConfig,
    TensorSpec,
    VersionPolicy,
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
