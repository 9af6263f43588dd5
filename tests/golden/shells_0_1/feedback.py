"""lifeloop's feedback model for Triton: a thin shell over lifeloop.loop.feedback."""

import triton_python_backend_utils as pb_utils

from lifeloop.loop.feedback import FeedbackModel


class TritonPythonModel:
    def initialize(self, args):
        self.feedback = FeedbackModel.from_args(args, pb_utils)

    def execute(self, requests):
        return self.feedback.execute(requests)

    def finalize(self):
        self.feedback.close()
