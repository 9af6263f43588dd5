"""The typed Triton model config, rendered to config.pbtxt and parsed back by this one module.

Rendering goes through tritonclient's `model_config_pb2` and protobuf's `text_format`, never
string templates, so whatever Triton's schema accepts is what we write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from lifeloop.errors import RepositoryError

# The labels of a classifier, one per line in class-index order, beside its config.pbtxt.
LABELS_FILE = "labels.txt"


class DataType(StrEnum):
    FP32 = "TYPE_FP32"
    FP16 = "TYPE_FP16"
    INT8 = "TYPE_INT8"
    UINT8 = "TYPE_UINT8"
    INT32 = "TYPE_INT32"
    INT64 = "TYPE_INT64"
    BOOL = "TYPE_BOOL"
    STRING = "TYPE_STRING"

    @property
    def triton_name(self) -> str:
        """The name tritonclient uses for tensors ("FP32", "BYTES")."""
        return "BYTES" if self is DataType.STRING else self.value.removeprefix("TYPE_")


class TensorFormat(StrEnum):
    """An image input's layout, which clients that only read the config (Triton's image
    client) need to lay out pixels; Triton allows it on inputs of 3 dims."""

    NONE = "FORMAT_NONE"
    NCHW = "FORMAT_NCHW"
    NHWC = "FORMAT_NHWC"

    @classmethod
    def of_layout(cls, layout: str) -> TensorFormat:
        try:
            return cls(f"FORMAT_{layout.upper()}")
        except ValueError:
            raise RepositoryError(f"layout {layout!r} is not one of NCHW, NHWC") from None


class InstanceKind(StrEnum):
    CPU = "KIND_CPU"
    GPU = "KIND_GPU"
    AUTO = "KIND_AUTO"


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    name: str
    data_type: DataType
    dims: tuple[int, ...]
    # An output's label file, in the model's folder: Triton's classification extension
    # (`class_count`) answers "score:index:label" from it.
    label_filename: str = ""
    format: TensorFormat = TensorFormat.NONE  # inputs only
    optional: bool = False  # inputs only: a request may leave it out

    def __post_init__(self) -> None:
        if not self.name:
            raise RepositoryError("a tensor needs a name; set TensorSpec(name=...)")
        if not self.dims or any(d == 0 or d < -1 for d in self.dims):
            raise RepositoryError(
                f"tensor {self.name!r} has dims {list(self.dims)}; use positive sizes or -1"
            )
        if self.format is not TensorFormat.NONE and len(self.dims) != 3:
            raise RepositoryError(
                f"tensor {self.name!r} has dims {list(self.dims)}; Triton allows format "
                f"{self.format.value} only on 3 dims (without the batch axis)"
            )
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))


@dataclass(frozen=True, kw_only=True)
class DynamicBatching:
    max_queue_delay_us: int = 500
    preferred_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_queue_delay_us < 0:
            raise RepositoryError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")


@dataclass(frozen=True, kw_only=True)
class InstanceGroup:
    count: int = 1
    kind: InstanceKind = InstanceKind.CPU

    def __post_init__(self) -> None:
        if self.count < 1:
            raise RepositoryError(f"instance_group count must be >= 1, got {self.count}")


WARMUP_RANDOM, WARMUP_ZERO = "random", "zero"


@dataclass(frozen=True, kw_only=True)
class WarmupInput:
    """One input of a warmup sample: random data, zeros, or a file in `<model>/warmup/`."""

    data_type: DataType
    dims: tuple[int, ...]
    source: str = WARMUP_RANDOM  # "random", "zero", or the name of a file

    def __post_init__(self) -> None:
        if any(d < 1 for d in self.dims):
            raise RepositoryError(f"warmup dims must be positive, got {list(self.dims)}")


@dataclass(frozen=True, kw_only=True)
class Warmup:
    """A request Triton sends each instance before it marks a version READY; inputs are
    repeated `batch_size` times."""

    name: str
    batch_size: int
    inputs: dict[str, WarmupInput]
    count: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.count < 1:
            raise RepositoryError(
                f"warmup {self.name!r}: batch_size and count must be >= 1, got "
                f"{self.batch_size} and {self.count}"
            )


@dataclass(frozen=True, kw_only=True)
class EnsembleStep:
    """One step of an ensemble: `input_map`/`output_map` map the step model's tensor names
    to the ensemble's tensor names."""

    model: str
    input_map: dict[str, str]
    output_map: dict[str, str]
    version: int = -1  # -1: the newest version the step model serves


@dataclass(frozen=True, kw_only=True)
class VersionPolicy:
    """Exactly one of: the latest N versions, specific versions, or all versions."""

    latest: int | None = 2
    specific: tuple[int, ...] = ()
    all: bool = False

    def __post_init__(self) -> None:
        chosen = sum([self.latest is not None, bool(self.specific), self.all])
        if chosen != 1:
            raise RepositoryError(
                "version_policy needs exactly one of latest, specific or all; "
                f"got latest={self.latest}, specific={list(self.specific)}, all={self.all}"
            )
        if self.latest is not None and self.latest < 1:
            raise RepositoryError(f"version_policy latest must be >= 1, got {self.latest}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name: str
    backend: str = "onnxruntime"
    max_batch_size: int = 32
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_batching: DynamicBatching | None = field(default_factory=DynamicBatching)
    instance_groups: tuple[InstanceGroup, ...] = (InstanceGroup(),)
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    parameters: dict[str, str] = field(default_factory=dict)
    warmup: tuple[Warmup, ...] = ()
    platform: str = ""  # "ensemble" for an ensemble, which has steps and no backend
    ensemble_steps: tuple[EnsembleStep, ...] = ()
    # Triton's response cache (the server needs `lifeloop serve --cache-mb N`): a hit skips
    # the model's code. For classifiers only, never a router, which must log every request.
    response_cache: bool = False

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise RepositoryError(
                f"model name {self.name!r} is not usable as a folder; use letters, digits, _ or -"
            )
        if self.max_batch_size < 0:
            raise RepositoryError(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        if not self.inputs or not self.outputs:
            raise RepositoryError(f"model {self.name!r} needs at least one input and one output")
        if self.dynamic_batching is not None and self.max_batch_size == 0:
            raise RepositoryError(f"model {self.name!r}: dynamic batching needs max_batch_size > 0")
        if (self.platform == "ensemble") != bool(self.ensemble_steps):
            raise RepositoryError(
                f"model {self.name!r}: an ensemble needs platform 'ensemble' and at least one "
                "step, and only an ensemble has steps"
            )
        if self.ensemble_steps and (self.instance_groups or self.backend or self.warmup):
            raise RepositoryError(
                f"model {self.name!r}: an ensemble has no backend, instance groups or warmup "
                "(Triton refuses them); its steps' models have their own"
            )
        too_big = [w.name for w in self.warmup if w.batch_size > max(1, self.max_batch_size)]
        if too_big:
            raise RepositoryError(
                f"model {self.name!r}: warmup {too_big} exceed max_batch_size "
                f"{self.max_batch_size}; regenerate them with standard_warmup()"
            )

    def with_parameters(self, **updates: str) -> ModelConfig:
        return replace(self, parameters={**self.parameters, **updates})

    def json_parameter(self, key: str, default: Any = None) -> Any:
        raw = self.parameters.get(key)
        return default if raw is None else json.loads(raw)


def to_proto(config: ModelConfig) -> pb.ModelConfig:
    message = pb.ModelConfig(name=config.name, max_batch_size=config.max_batch_size)
    if config.backend:
        message.backend = config.backend
    if config.platform:
        message.platform = config.platform
    policy = config.version_policy
    if policy.all:
        message.version_policy.all.SetInParent()
    elif policy.specific:
        message.version_policy.specific.versions.extend(policy.specific)
    else:
        message.version_policy.latest.num_versions = policy.latest or 1
    for spec, target in ((s, message.input.add()) for s in config.inputs):
        _fill_tensor(target, spec)
    for spec, target in ((s, message.output.add()) for s in config.outputs):
        _fill_tensor(target, spec)
    if config.dynamic_batching is not None:
        batching = message.dynamic_batching
        batching.SetInParent()
        batching.max_queue_delay_microseconds = config.dynamic_batching.max_queue_delay_us
        batching.preferred_batch_size.extend(config.dynamic_batching.preferred_batch_sizes)
    for group in config.instance_groups:
        message.instance_group.add(
            count=group.count, kind=pb.ModelInstanceGroup.Kind.Value(group.kind.value)
        )
    for key in sorted(config.parameters):
        message.parameters[key].string_value = config.parameters[key]
    for warmup in config.warmup:
        sample = message.model_warmup.add(
            name=warmup.name, batch_size=warmup.batch_size, count=warmup.count
        )
        for name in sorted(warmup.inputs):
            given = warmup.inputs[name]
            target = sample.inputs[name]
            target.data_type = pb.DataType.Value(given.data_type.value)
            target.dims.extend(given.dims)
            if given.source == WARMUP_RANDOM:
                target.random_data = True
            elif given.source == WARMUP_ZERO:
                target.zero_data = True
            else:
                target.input_data_file = given.source
    if config.response_cache:
        message.response_cache.enable = True
    for step in config.ensemble_steps:
        added = message.ensemble_scheduling.step.add(
            model_name=step.model, model_version=step.version
        )
        for key in sorted(step.input_map):
            added.input_map[key] = step.input_map[key]
        for key in sorted(step.output_map):
            added.output_map[key] = step.output_map[key]
    return message


def from_proto(message: pb.ModelConfig) -> ModelConfig:
    which = message.version_policy.WhichOneof("policy_choice")
    if which == "all":
        policy = VersionPolicy(latest=None, all=True)
    elif which == "specific":
        policy = VersionPolicy(
            latest=None, specific=tuple(message.version_policy.specific.versions)
        )
    else:
        # Triton's default when no policy is written is latest { num_versions: 1 }.
        num = message.version_policy.latest.num_versions if which == "latest" else 1
        policy = VersionPolicy(latest=num)
    batching = None
    if message.HasField("dynamic_batching"):
        batching = DynamicBatching(
            max_queue_delay_us=message.dynamic_batching.max_queue_delay_microseconds,
            preferred_batch_sizes=tuple(message.dynamic_batching.preferred_batch_size),
        )
    return ModelConfig(
        name=message.name,
        backend=message.backend,
        max_batch_size=message.max_batch_size,
        inputs=tuple(_tensor(t) for t in message.input),
        outputs=tuple(_tensor(t) for t in message.output),
        dynamic_batching=batching,
        instance_groups=tuple(
            InstanceGroup(
                count=g.count or 1, kind=InstanceKind(pb.ModelInstanceGroup.Kind.Name(g.kind))
            )
            for g in message.instance_group
        ),
        version_policy=policy,
        parameters={k: v.string_value for k, v in message.parameters.items()},
        warmup=tuple(_warmup(w) for w in message.model_warmup),
        platform=message.platform,
        ensemble_steps=tuple(
            EnsembleStep(
                model=step.model_name,
                version=step.model_version,
                input_map=dict(step.input_map),
                output_map=dict(step.output_map),
            )
            for step in message.ensemble_scheduling.step
        ),
        response_cache=message.response_cache.enable,
    )


def _warmup(message: Any) -> Warmup:
    inputs = {}
    for name, given in message.inputs.items():
        which = given.WhichOneof("input_data_type")
        source = {"random_data": WARMUP_RANDOM, "zero_data": WARMUP_ZERO}.get(
            which or "", given.input_data_file
        )
        inputs[name] = WarmupInput(
            data_type=DataType(pb.DataType.Name(given.data_type)),
            dims=tuple(given.dims),
            source=source,
        )
    return Warmup(
        name=message.name, batch_size=message.batch_size, inputs=inputs, count=message.count or 1
    )


def render(config: ModelConfig) -> str:
    """ModelConfig -> config.pbtxt text."""
    return text_format.MessageToString(to_proto(config))


def parse(text: str, *, source: str = "config.pbtxt") -> ModelConfig:
    """config.pbtxt text -> ModelConfig; a syntax error names the file and the line."""
    message = pb.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise RepositoryError(f"{source} is not a valid Triton model config: {exc}") from exc
    return from_proto(message)


def _fill_tensor(target: Any, spec: TensorSpec) -> None:
    target.name = spec.name
    target.data_type = pb.DataType.Value(spec.data_type.value)
    target.dims.extend(spec.dims)
    if spec.label_filename:
        target.label_filename = spec.label_filename
    if spec.format is not TensorFormat.NONE:
        target.format = pb.ModelInput.Format.Value(spec.format.value)
    if spec.optional:
        target.optional = True


def _tensor(message: Any) -> TensorSpec:
    return TensorSpec(
        name=message.name,
        data_type=DataType(pb.DataType.Name(message.data_type)),
        dims=tuple(message.dims),
        label_filename=getattr(message, "label_filename", ""),
        format=TensorFormat(pb.ModelInput.Format.Name(getattr(message, "format", 0))),
        optional=bool(getattr(message, "optional", False)),
    )


def standard_warmup(config: ModelConfig) -> tuple[Warmup, ...]:
    """Random inputs at batch 1 and at max_batch_size, so that a version is READY only once
    both its smallest and its largest batch have run (allocations, kernel choices)."""
    sizes = sorted({1, max(1, config.max_batch_size)})
    inputs = {
        spec.name: WarmupInput(data_type=spec.data_type, dims=tuple(max(d, 1) for d in spec.dims))
        for spec in config.inputs
    }
    return tuple(Warmup(name=f"batch_{size}", batch_size=size, inputs=inputs) for size in sizes)


def classifier_config(
    name: str,
    *,
    input_name: str,
    input_shape: tuple[int, ...],
    output_name: str,
    max_batch_size: int = 32,
    max_queue_delay_us: int = 500,
    instances: int = 1,
    intra_op_threads: int = 0,
    parameters: dict[str, str] | None = None,
    input_format: str = "NCHW",
    response_cache: bool = False,
) -> ModelConfig:
    """The default config for a classifier: dynamic batching with a short queue delay, the
    latest two versions loaded, CPU instances, the input's layout (`input_format`) on an
    image input, logits dims [-1] so that a version with more classes needs no new config,
    the label file for `class_count`, and warmup at batch 1 and at max_batch_size."""
    params = {"intra_op_thread_count": str(intra_op_threads)} if intra_op_threads else {}
    params.update(parameters or {})
    config = ModelConfig(
        name=name,
        max_batch_size=max_batch_size,
        inputs=(
            TensorSpec(
                name=input_name,
                data_type=DataType.FP32,
                dims=input_shape,
                format=TensorFormat.of_layout(input_format)
                if len(input_shape) == 3
                else TensorFormat.NONE,
            ),
        ),
        outputs=(
            TensorSpec(
                name=output_name,
                data_type=DataType.FP32,
                dims=(-1,),
                label_filename=LABELS_FILE,
            ),
        ),
        dynamic_batching=DynamicBatching(max_queue_delay_us=max_queue_delay_us),
        instance_groups=(InstanceGroup(count=instances),),
        version_policy=VersionPolicy(latest=2),
        parameters=params,
        response_cache=response_cache,
    )
    return replace(config, warmup=standard_warmup(config))
