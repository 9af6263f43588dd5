"""lifeloop's router model for Triton: a thin shell over lifeloop.loop.router."""

import triton_python_backend_utils as pb_utils

from lifeloop.loop.router import Router


class TritonPythonModel:
    def initialize(self, args):
        self.router = Router.from_args(args, pb_utils)

    def execute(self, requests):
        return self.router.execute(requests)

    def finalize(self):
        self.router.close()
