"""TensorRT plans: built only where a CUDA GPU and the tensorrt package are present.

What does not need a GPU lives here too and is tested without one: the optimization profile
over the dynamic batch range, the Triton config for a plan, the target a plan was built for
(GPU name, compute capability, TensorRT version) as the manifest records it, and the check
that refuses a plan on another GPU or TensorRT version, naming what to rebuild."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lifeloop.errors import ExportError
from lifeloop.export.formats import base_model
from lifeloop.repository import config as cfg
from lifeloop.repository.manifest import Manifest

PLAN_FILE = "model.plan"
WORKSPACE_BYTES = 2 << 30


@dataclass(frozen=True, kw_only=True)
class ShapeProfile:
    """One TensorRT optimization profile over the batch axis: min, opt and max shapes of the
    input. `opt` is what TensorRT tunes its kernels for."""

    input_name: str
    sample_shape: tuple[int, ...]  # without the batch axis
    min_batch: int
    opt_batch: int
    max_batch: int

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ExportError(
                f"TensorRT profile batches must satisfy 1 <= min <= opt <= max, got "
                f"{self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )
        if not self.sample_shape or min(self.sample_shape) < 1:
            raise ExportError(
                f"TensorRT profile needs a fixed sample shape, got {list(self.sample_shape)}"
            )

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return tuple(  # type: ignore[return-value]
            (batch, *self.sample_shape)
            for batch in (self.min_batch, self.opt_batch, self.max_batch)
        )


def batch_profile(
    input_name: str,
    sample_shape: tuple[int, ...],
    max_batch_size: int,
    opt_batch: int | None = None,
) -> ShapeProfile:
    """Batch 1 to `max_batch_size`, tuned for `max_batch_size` unless told otherwise: under
    load Triton's dynamic batcher hands the plan full batches, and that is where throughput
    is decided; a lone request still runs on the same kernels."""
    if max_batch_size < 1:
        raise ExportError(
            f"a TensorRT plan for Triton's dynamic batcher needs max_batch_size >= 1, got "
            f"{max_batch_size}"
        )
    return ShapeProfile(
        input_name=input_name,
        sample_shape=tuple(sample_shape),
        min_batch=1,
        opt_batch=opt_batch or max_batch_size,
        max_batch=max_batch_size,
    )


@dataclass(frozen=True, kw_only=True)
class PlanTarget:
    """What a serialized plan is tied to: it runs only on this GPU model (compute
    capability) with this TensorRT version."""

    gpu: str
    compute_capability: str
    tensorrt: str

    def to_tools(self) -> dict[str, str]:
        return {
            "tensorrt": self.tensorrt,
            "gpu": self.gpu,
            "compute_capability": self.compute_capability,
        }

    @classmethod
    def from_tools(cls, tools: dict[str, str]) -> PlanTarget | None:
        try:
            return cls(
                gpu=tools["gpu"],
                compute_capability=tools["compute_capability"],
                tensorrt=tools["tensorrt"],
            )
        except KeyError:
            return None


def check_plan(manifest: Manifest, here: PlanTarget) -> None:
    """Refuse a plan built for another GPU or TensorRT version, naming what to rebuild."""
    name = f"{manifest.model} v{manifest.version}"
    base = base_model(manifest.model, manifest.format)
    rebuild = (
        "rebuild it on this machine with `lifeloop export --checkpoint <its checkpoint> "
        f"--model {base} --format {manifest.format} --version {manifest.version}`"
    )
    built = PlanTarget.from_tools(manifest.tools)
    if built is None:
        raise ExportError(
            f"{name} is a TensorRT plan whose manifest does not record its GPU and TensorRT "
            f"version; {rebuild}"
        )
    differs = [
        f"{what} {getattr(built, attr)} (here: {getattr(here, attr)})"
        for what, attr in (
            ("GPU", "gpu"),
            ("compute capability", "compute_capability"),
            ("TensorRT", "tensorrt"),
        )
        if getattr(built, attr) != getattr(here, attr)
    ]
    # Plans move between GPU models only by TensorRT's hardware compatibility mode, which
    # lifeloop does not build with: the GPU name is checked as well as its capability.
    if differs:
        raise ExportError(
            f"{name} was built for {', '.join(differs)}; a TensorRT plan runs only where it "
            f"was built: {rebuild}"
        )


def plan_config(
    name: str,
    *,
    input_name: str,
    input_shape: tuple[int, ...],
    output_name: str,
    num_classes: int,
    max_batch_size: int,
    base: cfg.ModelConfig,
) -> cfg.ModelConfig:
    """The Triton config of a plan: the `tensorrt` backend on GPU instances, the plan's fixed
    logits width, and one version loaded (a plan's class count is baked in)."""
    logits = replace(base.outputs[0], name=output_name, dims=(num_classes,))
    config = replace(
        base,
        name=name,
        backend="tensorrt",
        max_batch_size=max_batch_size,
        inputs=(cfg.TensorSpec(name=input_name, data_type=cfg.DataType.FP32, dims=input_shape),),
        outputs=(logits,),
        instance_groups=(cfg.InstanceGroup(count=1, kind=cfg.InstanceKind.GPU),),
        version_policy=cfg.VersionPolicy(latest=1),
        parameters={k: v for k, v in base.parameters.items() if "thread" not in k},
        warmup=(),
    )
    return replace(config, warmup=cfg.standard_warmup(config))


def require_tensorrt() -> None:
    """Fail in one line, before any work, where TensorRT plans cannot be built."""
    if importlib.util.find_spec("tensorrt") is None:
        raise ExportError(
            "tensorrt-* formats need the tensorrt package and a CUDA GPU: install "
            "lifeloop[gpu] on a GPU machine, or export onnx, onnx-int8 or onnx-fp16 here"
        )
    import torch

    if not torch.cuda.is_available():
        raise ExportError(
            "tensorrt-* formats need a CUDA GPU and none is visible; build the plan on the GPU "
            "that will serve it (a plan only runs on the GPU model it was built for)"
        )


def this_target() -> PlanTarget:
    """The GPU and TensorRT version here (needs both)."""
    require_tensorrt()
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return PlanTarget(
        gpu=torch.cuda.get_device_name(0),
        compute_capability=f"{major}.{minor}",
        tensorrt=trt.__version__,
    )


def build_plan(
    onnx_path: Path,
    out: Path,
    *,
    profile: ShapeProfile,
    workspace_bytes: int = WORKSPACE_BYTES,
) -> Path:
    """Parse the ONNX file and build a serialized plan as a strongly typed network: the
    precision is the graph's own (fp16 tensors from onnx-fp16, Q/DQ nodes from a symmetric
    INT8 quantization), as TensorRT 11 requires and TensorRT 10 supports. Writes `out`."""
    require_tensorrt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        problems = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(
            f"TensorRT cannot parse {Path(onnx_path).name}: "
            f"{problems[0].splitlines()[0] if problems else 'no reason given'}; export with "
            "another architecture or serve onnx-fp16 instead"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    optimization = builder.create_optimization_profile()
    optimization.set_shape(profile.input_name, *profile.shapes())
    config.add_optimization_profile(optimization)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"TensorRT could not build a plan from {Path(onnx_path).name} (see its warnings "
            "above); try a smaller --max-batch-size or serve onnx-fp16 instead"
        )
    out.write_bytes(bytes(serialized))
    return out


def predict_plan(path: Path, x: np.ndarray, *, input_name: str, output_name: str) -> np.ndarray:
    """Top-1 of a plan on `x`, in batches its profile accepts (for the quality gate)."""
    require_tensorrt()
    import tensorrt as trt
    import torch

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
        Path(path).read_bytes()
    )
    largest = engine.get_tensor_profile_shape(input_name, 0)[2][0]
    context = engine.create_execution_context()
    stream = torch.cuda.current_stream()
    answers = []
    for start in range(0, len(x), largest):
        chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + largest], np.float32))
        chunk = chunk.cuda()
        context.set_input_shape(input_name, tuple(chunk.shape))
        logits = torch.empty(
            tuple(context.get_tensor_shape(output_name)), dtype=torch.float32, device="cuda"
        )
        context.set_tensor_address(input_name, chunk.data_ptr())
        context.set_tensor_address(output_name, logits.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise ExportError(
                f"TensorRT could not run {Path(path).name} on a batch of {len(chunk)}"
            )
        stream.synchronize()
        answers.append(logits.argmax(1).cpu().numpy())
    return np.concatenate(answers)
