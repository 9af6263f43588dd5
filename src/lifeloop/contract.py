"""The names lifeloop's parts agree on: every `lifeloop.*` parameter key of a Triton model
config, the tensor names of the router and feedback models, and the control-API key header.

The exporter writes these keys, the Triton models read them and the client decodes them: one
module, imported by all three, so that they cannot drift apart.
"""

from __future__ import annotations

from typing import Any

# Written on every classifier version's config by the publisher.
LABELS_PARAM = "lifeloop.labels"  # JSON list: index -> class name
PREPROCESSING_PARAM = "lifeloop.preprocessing"  # JSON Preprocessing of the newest version
# What the newest version takes: "pixels" (0..255; the graph normalises) or "normalized".
INPUT_KIND_PARAM = "lifeloop.input_kind"
# What each published version takes: JSON {"<version>": "pixels" | "normalized"}.
INPUT_KINDS_PARAM = "lifeloop.input_kinds"
# On a model that fronts a classifier (router, preprocess, image ensemble): its name.
CLASSIFIER_PARAM = "lifeloop.classifier"

# The router model.
STORE_PARAM = "lifeloop.store"  # SQLAlchemy URL of the prediction store
BLOB_DIR_PARAM = "lifeloop.blob_dir"  # where kept inputs are written
SAMPLE_RATE_PARAM = "lifeloop.blob_sample_rate"  # share of inputs kept at random, 0..1
# Kept too: answers whose top-1 softmax is below this (0..1), and ("true") those a
# shadowing candidate disagrees with. See lifeloop.serve.sampling.
KEEP_UNCERTAIN_BELOW_PARAM = "lifeloop.keep_uncertain_below"
KEEP_DISAGREEING_PARAM = "lifeloop.keep_disagreeing"
# Their defaults for a new router. 0.2% of traffic at random: at 100 requests/s of 224x224
# pixel inputs (150,528 bytes kept each) that is 17,280 inputs and 2.6 GB a day, leaving room
# under 10 GB a day for every uncertain answer while they are under 0.57% of traffic.
DEFAULT_SAMPLE_RATE = 0.002
DEFAULT_KEEP_UNCERTAIN_BELOW = 0.5
# The bytes the router's kept inputs may take before the oldest unlabelled go (0: no limit),
# and how often it checks, in seconds. See lifeloop.store.retention.
KEEP_BUDGET_PARAM = "lifeloop.keep_budget_bytes"
KEEP_BUDGET_EVERY_PARAM = "lifeloop.keep_budget_every_s"
DEFAULT_KEEP_BUDGET = "10GB"
DEFAULT_KEEP_BUDGET_EVERY_S = 60.0
TOP_K_PARAM = "lifeloop.top_k"  # classes kept per logged prediction
# answers per version the router's drift gauge tests (0: no gauge)
DRIFT_WINDOW_PARAM = "lifeloop.drift_window"
DEFAULT_DRIFT_WINDOW = 300
SPOOL_DIR_PARAM = "lifeloop.spool_dir"  # the journal a store outage spools to
STORE_TIMEOUT_PARAM = "lifeloop.store_timeout_ms"  # longest wait for the store per batch
SPOOL_MAX_BYTES_PARAM = "lifeloop.spool_max_bytes"
SPOOL_WHEN_FULL_PARAM = "lifeloop.spool_when_full"  # refuse | drop

# The feedback model: which router's predictions it labels.
ROUTER_PARAM = "lifeloop.router"

# The preprocess model of the image ensemble.
MAX_BYTES_PARAM = "lifeloop.max_image_bytes"
MAX_PIXELS_PARAM = "lifeloop.max_image_pixels"
FORMATS_PARAM = "lifeloop.image_formats"

# Tensors. A classifier's own input and output names come from its config.
IMAGE_INPUT = "IMAGE"  # the image ensemble's encoded bytes
VERSION_OUTPUT = "model_version"  # router: the version that answered each row
REQUEST_ID_OUTPUT = "request_id"  # router: the id feedback refers to
ANSWERED_BY_OUTPUT = "answered_by"  # router: the model that answered each row
REQUEST_ID_INPUT = "request_id"  # feedback
LABEL_INPUT = "label"  # feedback
ACCEPTED_OUTPUT = "accepted"  # feedback

# Triton's restricted model-control API: the header lifeloop's clients send, and the
# environment variable they read its value from.
API_KEY_HEADER = "lifeloop-key"
API_KEY_ENV = "LIFELOOP_API_KEY"


def parameters(config: dict[str, Any]) -> dict[str, str]:
    """Triton's JSON config parameters {"key": {"string_value": "v"}} -> {"key": "v"}."""
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
