"""Classify image files through a served classifier with lifeloop's client.

    python examples/classify.py [URL [IMAGE...]]

URL: gRPC, default $LIFELOOP_URL or localhost:8001; the model: $LIFELOOP_MODEL or classifier.
The default images are two of the digits `make demo` writes."""

import os
import sys

from lifeloop.client import LifeloopClient

IMAGES = ["runs/demo/data/3/0003.png", "runs/demo/data/7/0007.png"]


def main(argv: list[str]) -> None:
    url = argv[0] if argv else os.environ.get("LIFELOOP_URL", "localhost:8001")
    images = argv[1:] or IMAGES
    model = os.environ.get("LIFELOOP_MODEL", "classifier")
    with LifeloopClient(url, protocol="grpc", model=model) as client:
        client.wait_until_ready(timeout_s=30, model=model)
        for image, answer in zip(images, client.classify(images, top_k=3), strict=True):
            top = zip(answer.labels, answer.scores, strict=True)
            scores = ", ".join(f"{label} {score:.2f}" for label, score in top)
            print(f"{image}: {answer.label} (top 3: {scores}) from version {answer.version}")


if __name__ == "__main__":
    main(sys.argv[1:])
