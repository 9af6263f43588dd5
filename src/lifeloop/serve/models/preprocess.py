"""lifeloop's preprocess model for Triton: a thin shell over lifeloop.serve.preprocess."""

import triton_python_backend_utils as pb_utils

from lifeloop.serve.preprocess import Preprocessor


class TritonPythonModel:
    def initialize(self, args):
        self.preprocessor = Preprocessor.from_args(args, pb_utils)

    def execute(self, requests):
        return self.preprocessor.execute(requests)
