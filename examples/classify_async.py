"""Classify images over HTTP with the asyncio client, all requests in flight at once.

    python examples/classify_async.py [URL [IMAGE...]]

URL: HTTP, default $LIFELOOP_URL or localhost:8000; the model: $LIFELOOP_MODEL or classifier.
The default images are two of the digits `make demo` writes."""

import asyncio
import os
import sys

from lifeloop.client import AsyncLifeloopClient

IMAGES = ["runs/demo/data/3/0003.png", "runs/demo/data/7/0007.png"]


async def classify(url: str, model: str, images: list[str]) -> None:
    async with AsyncLifeloopClient(url, protocol="http", model=model) as client:
        await client.wait_until_ready(timeout_s=30, model=model)
        # One request per image, sent together: Triton's dynamic batcher may join them.
        answers = await asyncio.gather(*(client.classify([image], top_k=1) for image in images))
    for image, [answer] in zip(images, answers, strict=True):
        print(f"{image}: {answer.label} from version {answer.version}")


def main(argv: list[str]) -> None:
    url = argv[0] if argv else os.environ.get("LIFELOOP_URL", "localhost:8000")
    model = os.environ.get("LIFELOOP_MODEL", "classifier")
    asyncio.run(classify(url, model, argv[1:] or IMAGES))


if __name__ == "__main__":
    main(sys.argv[1:])
