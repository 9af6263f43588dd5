"""lifeloop's `onnxruntime` Python-based backend for Triton: a thin shell over
lifeloop.serve.ort_runner. On the NGC image, Triton's native ONNX Runtime backend serves the
same repository instead."""

from pathlib import Path

import triton_python_backend_utils as pb_utils

from lifeloop.serve.ort_runner import BatchRunner
from lifeloop.serve.responses import error_for


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        # Raises when the version's files do not match its manifest: Triton then refuses the
        # version and logs this message.
        self.runner = BatchRunner(version_dir, args["model_config"])

    def execute(self, requests):
        batch = []
        for request in requests:
            tensors = {}
            for name in self.runner.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    tensors[name] = tensor.as_numpy()
            batch.append(tensors)
        responses = []
        for result in self.runner.run(batch):
            if isinstance(result, Exception):
                # A RequestError is the caller's (INVALID_ARG); anything else INTERNAL.
                error = error_for(pb_utils, result)
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                tensors = [pb_utils.Tensor(name, value) for name, value in result.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self):
        self.runner = None
