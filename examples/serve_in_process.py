"""Start the real tritonserver from Python on a model repository, classify through it, stop it.

    python examples/serve_in_process.py [REPOSITORY [IMAGE...]]

REPOSITORY: default model_repository; the model: $LIFELOOP_MODEL or classifier. The server
takes three free ports, loads every model in the repository, is ready when the `with` block
starts and stops when it ends. The default images are two of the digits `make demo` writes."""

import os
import sys
from pathlib import Path

from lifeloop.client import LifeloopClient
from lifeloop.serve import ServerConfig, TritonServer

IMAGES = ["runs/demo/data/3/0003.png", "runs/demo/data/7/0007.png"]


def main(argv: list[str]) -> None:
    repository = Path(argv[0] if argv else "model_repository")
    images = argv[1:] or IMAGES
    model = os.environ.get("LIFELOOP_MODEL", "classifier")
    with TritonServer(ServerConfig.on_free_ports(repository)) as server:
        print(f"tritonserver ready: http {server.http_url}, grpc {server.grpc_url}")
        with LifeloopClient(server.grpc_url, protocol="grpc", model=model) as client:
            for image, answer in zip(images, client.classify(images, top_k=1), strict=True):
                print(f"{image}: {answer.label} from version {answer.version}")
    print(f"tritonserver stopped; its log: {server.log_path}")


if __name__ == "__main__":
    main(sys.argv[1:])
