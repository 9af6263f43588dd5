"""A classifier client written only against Triton's model metadata and config, the way
Triton's example image client (src/python/examples/image_client.py) is: no lifeloop import.

It checks what that client checks (one 3-dim input with format NCHW or NHWC, one FP32 output
that is a vector), resizes each image with Pillow's bilinear filter, scales by NONE (pixel
values 0..255 as FP32), lays it out in the declared format and asks for the classification
extension (`class_count`), reading "score:index:label" back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from PIL import Image


@dataclass(frozen=True)
class ImageModel:
    max_batch_size: int
    input_name: str
    output_name: str
    channels: int
    height: int
    width: int
    format: str  # FORMAT_NCHW or FORMAT_NHWC
    dtype: str


def parse_model(metadata: dict, config: dict) -> ImageModel:
    """What the image client reads from the model, refusing what it refuses."""
    if len(metadata["inputs"]) != 1 or len(metadata["outputs"]) != 1:
        raise ValueError("expecting 1 input and 1 output")
    if len(config["input"]) != 1:
        raise ValueError(f"expecting 1 input in model configuration, got {len(config['input'])}")
    input_meta, input_config = metadata["inputs"][0], config["input"][0]
    output_meta = metadata["outputs"][0]
    if output_meta["datatype"] != "FP32":
        raise ValueError(f"expecting output datatype to be FP32, got {output_meta['datatype']}")
    batching = config.get("max_batch_size", 0) > 0
    dims = [d for d in output_meta["shape"][1 if batching else 0 :] if d > 1]
    if len(dims) > 1:
        raise ValueError("expecting model output to be a vector")
    shape = input_meta["shape"][1 if batching else 0 :]
    if len(shape) != 3:
        raise ValueError(f"expecting input to have 3 dimensions, got {len(shape)}")
    layout = input_config.get("format", "FORMAT_NONE")
    if layout not in ("FORMAT_NCHW", "FORMAT_NHWC"):
        raise ValueError(f"unexpected input format {layout}, expecting FORMAT_NCHW or FORMAT_NHWC")
    if layout == "FORMAT_NHWC":
        height, width, channels = shape
    else:
        channels, height, width = shape
    return ImageModel(
        max_batch_size=config.get("max_batch_size", 0),
        input_name=input_meta["name"],
        output_name=output_meta["name"],
        channels=channels,
        height=height,
        width=width,
        format=layout,
        dtype=input_meta["datatype"],
    )


def preprocess(image: Image.Image, model: ImageModel) -> np.ndarray:
    """Resize, scaling NONE, and the declared layout."""
    image = image.convert("L" if model.channels == 1 else "RGB")
    resized = image.resize((model.width, model.height), Image.BILINEAR)
    pixels = np.array(resized).astype(np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    return np.transpose(pixels, (2, 0, 1)) if model.format == "FORMAT_NCHW" else pixels


def classify(url: str, model_name: str, paths: list[Path], batch_size: int = 8) -> list[str]:
    """The top-1 label of each image."""
    client = httpclient.InferenceServerClient(url)
    try:
        model = parse_model(
            client.get_model_metadata(model_name), client.get_model_config(model_name)
        )
        labels: list[str] = []
        for start in range(0, len(paths), batch_size):
            chunk = [preprocess(Image.open(p), model) for p in paths[start : start + batch_size]]
            batch = np.stack(chunk)
            tensor = httpclient.InferInput(model.input_name, list(batch.shape), model.dtype)
            tensor.set_data_from_numpy(batch)
            wanted = httpclient.InferRequestedOutput(model.output_name, class_count=1)
            result = client.infer(model_name, [tensor], outputs=[wanted])
            for row in result.as_numpy(model.output_name).reshape(len(chunk), -1):
                entry = row[0].decode() if isinstance(row[0], bytes) else str(row[0])
                labels.append(entry.split(":", 2)[2])
        return labels
    finally:
        client.close()
