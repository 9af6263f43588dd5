"""`lifeloop image init`: let clients send encoded images. It writes a `preprocess` Python
model (bytes -> the classifier's input) and an ensemble `<classifier>_image` (preprocess ->
classifier) whose output carries the classifier's label file, so that Triton's
classification extension (`class_count`) answers "score:index:label" for raw images.

With `router`, the ensemble is `<router>_image` (preprocess -> router): every image is
routed and logged like any other, answers with its `request_id` and `model_version`, and the
router keeps the encoded bytes the client sent (passed to it beside the decoded batch), not
the decoded tensor."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from lifeloop.contract import (
    CLASSIFIER_PARAM,
    IMAGE_INPUT,
    LABELS_PARAM,
    REQUEST_ID_OUTPUT,
    VERSION_OUTPUT,
)
from lifeloop.errors import RepositoryError
from lifeloop.repository import config as cfg
from lifeloop.repository.publish import (
    ensure_repository,
    model_lock,
    read_config,
    replace_file,
    version_numbers,
    write_config,
    write_label_files,
    write_python_model,
)
from lifeloop.serve.preprocess import ImageLimits

MODELS_DIR = Path(__file__).parent / "models"
WARMUP_DIR = "warmup"
WARMUP_IMAGE = "image.bin"


@dataclass(frozen=True)
class ImageEnsemble:
    preprocess: str
    ensemble: str
    classifier: str
    limits: ImageLimits
    router: str | None = None  # the router the ensemble routes through, if any


def install_image_ensemble(
    repository: Path,
    classifier: str,
    *,
    preprocess: str = "preprocess",
    ensemble: str | None = None,
    limits: ImageLimits | None = None,
    server_url: str | list[str] | None = None,
    router: str | None = None,
) -> ImageEnsemble:
    repository = ensure_repository(repository).resolve()
    ensemble = ensemble or f"{router or classifier}_image"
    limits = limits or ImageLimits()
    classifier_config = read_config(repository / classifier)
    if classifier_config is None or not version_numbers(repository / classifier):
        raise RepositoryError(
            f"model {classifier!r} has no published version in {repository}; export one with "
            "`lifeloop export` or `lifeloop train` first"
        )
    for name in (preprocess, ensemble):
        existing = read_config(repository / name)
        fronts = existing.parameters.get(CLASSIFIER_PARAM) if existing else None
        if existing is not None and fronts != classifier:
            raise RepositoryError(
                f"model {name!r} already exists in {repository} and does not front "
                f"{classifier!r}; pick another --preprocess or --ensemble name"
            )
    tensor = classifier_config.inputs[0]
    logits = classifier_config.outputs[0]
    answers = _router_outputs(repository, router, classifier) if router else ()
    batch = classifier_config.max_batch_size
    image = cfg.TensorSpec(name=IMAGE_INPUT, data_type=cfg.DataType.STRING, dims=(1,))
    warm = cfg.WarmupInput(data_type=cfg.DataType.STRING, dims=(1,), source=WARMUP_IMAGE)
    pre_config = cfg.ModelConfig(
        name=preprocess,
        backend="python",
        max_batch_size=batch,
        inputs=(image,),
        outputs=(replace(tensor, format=cfg.TensorFormat.NONE),),  # a format is an input's
        dynamic_batching=cfg.DynamicBatching(max_queue_delay_us=0) if batch else None,
        version_policy=cfg.VersionPolicy(latest=1),
        parameters={CLASSIFIER_PARAM: classifier, **limits.to_parameters()},
        warmup=tuple(
            cfg.Warmup(name=f"batch_{size}", batch_size=size, inputs={IMAGE_INPUT: warm})
            for size in sorted({1, max(1, batch)})
        ),
    )
    pre_dir = repository / preprocess
    (pre_dir / WARMUP_DIR).mkdir(parents=True, exist_ok=True)
    replace_file(pre_dir / WARMUP_DIR / WARMUP_IMAGE, _warmup_image(tensor.dims))
    write_python_model(repository, pre_config, MODELS_DIR / "preprocess.py")

    step_tensor = f"{preprocess}_{tensor.name}"
    ensemble_config = cfg.ModelConfig(
        name=ensemble,
        backend="",
        platform="ensemble",
        max_batch_size=batch,
        inputs=(image,),
        outputs=(replace(logits, label_filename=cfg.LABELS_FILE), *answers),
        dynamic_batching=None,
        instance_groups=(),  # Triton refuses them on an ensemble
        version_policy=cfg.VersionPolicy(latest=1),
        parameters={
            CLASSIFIER_PARAM: classifier,
            LABELS_PARAM: classifier_config.parameters.get(LABELS_PARAM, "[]"),
        },
        ensemble_steps=(
            cfg.EnsembleStep(
                model=preprocess,
                input_map={IMAGE_INPUT: IMAGE_INPUT},
                output_map={tensor.name: step_tensor},
            ),
            cfg.EnsembleStep(
                model=router or classifier,
                input_map={
                    tensor.name: step_tensor,
                    **({IMAGE_INPUT: IMAGE_INPUT} if router else {}),
                },
                output_map={
                    logits.name: logits.name,
                    **{spec.name: spec.name for spec in answers},
                },
            ),
        ),
    )
    ensemble_dir = repository / ensemble
    (ensemble_dir / "1").mkdir(parents=True, exist_ok=True)  # an ensemble's one, empty version
    with model_lock(ensemble_dir):
        write_label_files(ensemble_dir, ensemble_config)
    write_config(repository, ensemble_config)
    if server_url:
        from lifeloop.rollout.replicas import load_everywhere

        load_everywhere(server_url, [preprocess, ensemble], what=f"load {ensemble}")
    return ImageEnsemble(preprocess, ensemble, classifier, limits, router)


def _router_outputs(repository: Path, router: str, classifier: str) -> tuple[cfg.TensorSpec, ...]:
    """What the ensemble returns from `router` beside the logits: each image's request id and
    answering version. A router that predates the encoded-image input is refused, with the
    fix."""
    config = read_config(repository / router)
    if config is None or config.parameters.get(CLASSIFIER_PARAM) != classifier:
        raise RepositoryError(
            f"{router!r} in {repository} is not a router in front of {classifier!r}; set one "
            f"up with `lifeloop router init --model {classifier} --router {router}`"
        )
    if IMAGE_INPUT not in {spec.name for spec in config.inputs}:
        raise RepositoryError(
            f"router {router!r} was set up before it kept encoded images; run `lifeloop router "
            f"init --model {classifier} --router {router}` again (it keeps its policy)"
        )
    wanted = (VERSION_OUTPUT, REQUEST_ID_OUTPUT)
    return tuple(spec for spec in config.outputs if spec.name in wanted)


def _warmup_image(dims: tuple[int, ...]) -> bytes:
    """A mid-grey PNG at the classifier's input size, as Triton reads a BYTES warmup file:
    each element's 4-byte length, then its bytes."""
    if len(dims) != 3 or min(dims) < 1:
        raise RepositoryError(
            f"the classifier's input dims {list(dims)} are not [channels, height, width]; the "
            "image ensemble needs an image classifier exported by lifeloop"
        )
    channels, height, width = dims
    mode = "L" if channels == 1 else "RGB"
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color=128 if mode == "L" else (128, 128, 128)).save(
        buffer, format="PNG"
    )
    png = buffer.getvalue()
    return struct.pack("<I", len(png)) + png
