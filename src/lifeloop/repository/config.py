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

from lifeloop.repository.errors import RepositoryError


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


class InstanceKind(StrEnum):
    CPU = "KIND_CPU"
    GPU = "KIND_GPU"
    AUTO = "KIND_AUTO"


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    name: str
    data_type: DataType
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.name:
            raise RepositoryError("a tensor needs a name; set TensorSpec(name=...)")
        if not self.dims or any(d == 0 or d < -1 for d in self.dims):
            raise RepositoryError(
                f"tensor {self.name!r} has dims {list(self.dims)}; use positive sizes or -1"
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

    def with_parameters(self, **updates: str) -> ModelConfig:
        return replace(self, parameters={**self.parameters, **updates})

    def json_parameter(self, key: str, default: Any = None) -> Any:
        raw = self.parameters.get(key)
        return default if raw is None else json.loads(raw)


def to_proto(config: ModelConfig) -> pb.ModelConfig:
    message = pb.ModelConfig(
        name=config.name, backend=config.backend, max_batch_size=config.max_batch_size
    )
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


def _tensor(message: Any) -> TensorSpec:
    return TensorSpec(
        name=message.name,
        data_type=DataType(pb.DataType.Name(message.data_type)),
        dims=tuple(message.dims),
    )


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
) -> ModelConfig:
    """The default config for a classifier: dynamic batching with a short queue delay, the
    latest two versions loaded, CPU instances, and logits dims [-1] so that a version with
    more classes needs no new config."""
    params = {"intra_op_thread_count": str(intra_op_threads)} if intra_op_threads else {}
    params.update(parameters or {})
    return ModelConfig(
        name=name,
        max_batch_size=max_batch_size,
        inputs=(TensorSpec(name=input_name, data_type=DataType.FP32, dims=input_shape),),
        outputs=(TensorSpec(name=output_name, data_type=DataType.FP32, dims=(-1,)),),
        dynamic_batching=DynamicBatching(max_queue_delay_us=max_queue_delay_us),
        instance_groups=(InstanceGroup(count=instances),),
        version_policy=VersionPolicy(latest=2),
        parameters=params,
    )
