"""Classify through the router, then send each image's true label back as feedback.

    python examples/feedback.py [URL [IMAGE...]]

The router (`lifeloop router init`) answers with a request id per image; feedback attaches a
true label to it, and `lifeloop retrain` learns from the labelled predictions. Here an image's
folder names its label, as in the image folder `lifeloop digits` writes.
URL: gRPC, default $LIFELOOP_URL or localhost:8001."""

import os
import sys
from pathlib import Path

from lifeloop.client import LifeloopClient

IMAGES = ["runs/demo/data/8/0008.png", "runs/demo/data/9/0009.png"]


def main(argv: list[str]) -> None:
    url = argv[0] if argv else os.environ.get("LIFELOOP_URL", "localhost:8001")
    images = argv[1:] or IMAGES
    with LifeloopClient(url, protocol="grpc", model="router") as client:
        client.wait_until_ready(timeout_s=30, model="router")
        answers = client.classify(images, top_k=1)
        for image, answer in zip(images, answers, strict=True):
            print(f"{image}: {answer.label} from version {answer.version}, id {answer.request_id}")
        ids = [answer.request_id or "" for answer in answers]
        labels = [Path(image).parent.name for image in images]
        stored = client.feedback(ids, labels)
        print(f"{stored} labels stored: {', '.join(labels)}")


if __name__ == "__main__":
    main(sys.argv[1:])
