"""Send encoded images to the `<model>_image` ensemble with plain tritonclient, and read the
top 3 labels through Triton's classification extension.

    python examples/tritonclient_image.py [URL [IMAGE...]]

`lifeloop image init` writes the ensemble; the server decodes, resizes and normalises.
URL: gRPC, default $LIFELOOP_URL or localhost:8001; the classifier: $LIFELOOP_MODEL or
classifier. The default images are two of the digits `make demo` writes."""

import os
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

IMAGES = ["runs/demo/data/3/0003.png", "runs/demo/data/7/0007.png"]


def main(argv: list[str]) -> None:
    url = argv[0] if argv else os.environ.get("LIFELOOP_URL", "localhost:8001")
    images = argv[1:] or IMAGES
    ensemble = os.environ.get("LIFELOOP_MODEL", "classifier") + "_image"
    # One encoded JPEG or PNG per row, as BYTES.
    data = np.array([Path(path).read_bytes() for path in images], dtype=np.object_)
    image = grpcclient.InferInput("IMAGE", [len(images), 1], "BYTES")
    image.set_data_from_numpy(data.reshape(-1, 1))
    top = grpcclient.InferRequestedOutput("logits", class_count=3)
    with grpcclient.InferenceServerClient(url.removeprefix("grpc://")) as client:
        rows = client.infer(ensemble, [image], outputs=[top]).as_numpy("logits")
    for path, row in zip(images, rows, strict=True):
        # One row per image, best first: b"<score>:<index>:<label>".
        best = [entry.decode().split(":", 2) for entry in row]
        scores = ", ".join(f"{label} {float(score):.2f}" for score, _, label in best)
        print(f"{path}: {best[0][2]} (top 3: {scores})")


if __name__ == "__main__":
    main(sys.argv[1:])
