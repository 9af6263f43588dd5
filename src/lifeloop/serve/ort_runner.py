"""The logic of lifeloop's `onnxruntime` Python-based backend, kept free of Triton imports.

One dynamic batch of requests becomes one `session.run`; outputs are split back per request.
Each request is checked on its own first, so a malformed request gets its own error (a
RequestError: the caller's, INVALID_ARG) and never fails its batch-mates. A request that fits
the contract and still fails in onnxruntime is the server's fault (INTERNAL), unless
onnxruntime itself calls the argument invalid. A version whose files do not match its manifest
refuses to load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lifeloop.contract import parameters
from lifeloop.errors import RequestError
from lifeloop.repository.manifest import verify

_DTYPES = {
    "TYPE_FP32": np.float32,
    "TYPE_FP16": np.float16,
    "TYPE_INT64": np.int64,
    "TYPE_INT32": np.int32,
    "TYPE_INT8": np.int8,
    "TYPE_UINT8": np.uint8,
    "TYPE_BOOL": np.bool_,
}
_EXECUTION_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}


@dataclass(frozen=True)
class Contract:
    name: str
    dtype: Any
    dims: tuple[int, ...]

    def check(self, array: np.ndarray | None, max_batch_size: int) -> None:
        if array is None:
            raise RequestError(f"input {self.name!r} is missing")
        if array.dtype != self.dtype:
            raise RequestError(
                f"input {self.name!r} has dtype {array.dtype}, expected {np.dtype(self.dtype)}"
            )
        batched = max_batch_size > 0
        shape = array.shape[1:] if batched else array.shape
        fits = len(shape) == len(self.dims) and all(
            d == -1 or d == s for d, s in zip(self.dims, shape, strict=True)
        )
        if not fits:
            want = ["batch", *self.dims] if batched else list(self.dims)
            raise RequestError(
                f"input {self.name!r} has shape {list(array.shape)}, expected {want}"
            )
        if batched and not 1 <= array.shape[0] <= max_batch_size:
            raise RequestError(
                f"input {self.name!r} has batch size {array.shape[0]}, expected 1..{max_batch_size}"
            )


def session_options(params: dict[str, str]) -> Any:
    """Session options named as the native ONNX Runtime backend names them, so one config
    means the same to both backends."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, attr in (
        ("intra_op_thread_count", "intra_op_num_threads"),
        ("inter_op_thread_count", "inter_op_num_threads"),
    ):
        if params.get(key, "").strip():
            setattr(options, attr, int(params[key]))
    mode = params.get("execution_mode", "").strip().lower()
    if mode:
        if mode.isdigit():  # the native backend takes 0 (sequential) or 1 (parallel)
            mode = "parallel" if mode == "1" else "sequential"
        options.execution_mode = getattr(ort.ExecutionMode, _EXECUTION_MODES[mode])
    if params.get("enable_mem_arena", "").strip() == "0":
        options.enable_cpu_mem_arena = False
    for key, value in params.items():
        # ONNX Runtime session config entries, e.g. session.intra_op.allow_spinning = 0.
        if key.startswith("session."):
            options.add_session_config_entry(key, value.strip())
    return options


class BatchRunner:
    """An onnxruntime session for one model version, run one dynamic batch at a time."""

    def __init__(self, version_dir: Path, config: dict[str, Any] | str) -> None:
        import onnxruntime as ort

        settings: dict[str, Any] = json.loads(config) if isinstance(config, str) else config
        self.manifest = verify(Path(version_dir))
        self.max_batch_size = int(settings.get("max_batch_size", 0))
        self.inputs = [_contract(t) for t in settings.get("input", [])]
        self.output_names = [t["name"] for t in settings.get("output", [])]
        onnx_files = [f.path for f in self.manifest.files if f.path.endswith(".onnx")]
        model_file = Path(version_dir) / (onnx_files[0] if onnx_files else "model.onnx")
        self.session = ort.InferenceSession(
            str(model_file),
            sess_options=session_options(parameters(settings)),
            providers=["CPUExecutionProvider"],
        )

    @property
    def input_names(self) -> list[str]:
        return [c.name for c in self.inputs]

    def run(self, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Exception]:
        """One answer per request, in order: its outputs, or the error that is its alone."""
        results: list[dict[str, np.ndarray] | Exception] = [RuntimeError("not run")] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, request in enumerate(requests):
            try:
                for contract in self.inputs:
                    contract.check(request.get(contract.name), self.max_batch_size)
            except RequestError as exc:
                results[index] = exc
                continue
            # Requests whose variable dims differ cannot share one tensor.
            key = tuple(request[c.name].shape[1:] for c in self.inputs)
            groups.setdefault(key, []).append(index)
        for members in groups.values():
            self._run_group(requests, members, results)
        return results

    def _run_group(
        self,
        requests: list[dict[str, np.ndarray]],
        members: list[int],
        results: list[dict[str, np.ndarray] | Exception],
    ) -> None:
        if self.max_batch_size == 0 or len(members) == 1:
            for index in members:
                results[index] = self._run_one(requests[index])
            return
        feeds = {
            c.name: np.concatenate([requests[i][c.name] for i in members]) for c in self.inputs
        }
        try:
            outputs = self.session.run(self.output_names, feeds)
        except Exception:
            # Something in the batch broke the run: answer each request on its own so only
            # the one at fault sees an error.
            for index in members:
                results[index] = self._run_one(requests[index])
            return
        start = 0
        for index in members:
            size = requests[index][self.inputs[0].name].shape[0]
            results[index] = {
                name: out[start : start + size]
                for name, out in zip(self.output_names, outputs, strict=True)
            }
            start += size

    def _run_one(self, request: dict[str, np.ndarray]) -> dict[str, np.ndarray] | Exception:
        try:
            feeds = {c.name: request[c.name] for c in self.inputs}
            outputs = self.session.run(self.output_names, feeds)
        except Exception as exc:
            return _failure(exc)
        return dict(zip(self.output_names, outputs, strict=True))


def _failure(exc: Exception) -> Exception:
    """onnxruntime's error for one request: the caller's (RequestError) when onnxruntime says
    the argument is invalid (its InvalidArgument), the server's otherwise."""
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, InvalidArgument):
        return RequestError(f"onnxruntime refused this request: {detail}")
    return RuntimeError(f"onnxruntime failed on this request: {detail}")


def _contract(tensor: dict[str, Any]) -> Contract:
    data_type = tensor.get("data_type", "TYPE_FP32")
    if data_type not in _DTYPES:
        raise ValueError(f"input {tensor['name']!r}: data type {data_type} is not supported")
    return Contract(tensor["name"], _DTYPES[data_type], tuple(int(d) for d in tensor["dims"]))
