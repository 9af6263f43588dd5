"""Locust users for a lifeloop classifier on Triton. Run it as any locustfile:

    locust -f "$(python -m lifeloop.loadtest.locustfile)" --headless -u 16 -r 16 -t 30s \\
        --host grpc://127.0.0.1:8001 --model classifier TritonGrpcUser

and distributed with `--master` / `--worker` as usual. Options come through Locust's own
mechanisms: these arguments, LOCUST_* environment variables, or locust.conf:

    --model NAME           model to load-test (LOCUST_MODEL; default classifier)
    --model-version N      pin a version (LOCUST_MODEL_VERSION; default: the server's latest)
    --payload-dir DIR      images to send, preprocessed by the model's config (LOCUST_PAYLOAD_DIR)
    --batch-size N         samples per request (LOCUST_BATCH_SIZE; default 1)
    --rate RPS             open loop: requests per second for this process (LOCUST_RATE)
    --arrival KIND         constant or poisson arrivals in open loop (LOCUST_ARRIVAL)

Each request is named "<model> v<version that answered>", so reports split per version.
In open loop each request's lateness against its schedule travels in the request context.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
import numpy as np
from grpc.experimental import gevent as grpc_gevent
from locust import User, constant, events, task

from lifeloop.client import ClientError, LifeloopClient
from lifeloop.loadtest.stats import Schedule

# gRPC's C core must cooperate with gevent before any channel exists, or greenlets block
# each other inside grpc calls.
grpc_gevent.init_gevent()

_SYNTHETIC_POOL = 16

# How long a stopping run waits for the requests in flight. A user killed mid-request cancels
# its gRPC call, and tritonserver 2.51 (the one nvidia-pytriton carries, and NGC's 24.10) can
# crash on a cancelled call: triton-inference-server/server#7368, fixed in 24.12.
IN_FLIGHT_GRACE_S = 30.0


@events.init.add_listener
def _finish_in_flight(environment: Any, **_: Any) -> None:
    """Unless --stop-timeout says otherwise, a stopping user finishes its request first."""
    if not environment.stop_timeout:
        environment.stop_timeout = IN_FLIGHT_GRACE_S


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("lifeloop")
    group.add_argument("--model", default="classifier", env_var="LOCUST_MODEL", help="Model name")
    group.add_argument(
        "--model-version",
        type=int,
        default=0,
        env_var="LOCUST_MODEL_VERSION",
        help="Pin a version (0: the server's latest)",
    )
    group.add_argument(
        "--payload-dir",
        default="",
        env_var="LOCUST_PAYLOAD_DIR",
        help="Folder of images to send (default: synthetic tensors)",
    )
    group.add_argument(
        "--batch-size", type=int, default=1, env_var="LOCUST_BATCH_SIZE", help="Samples per request"
    )
    group.add_argument(
        "--rate",
        type=float,
        default=0.0,
        env_var="LOCUST_RATE",
        help="Open loop: requests per second for this process (0: closed loop)",
    )
    group.add_argument(
        "--arrival",
        default="constant",
        choices=["constant", "poisson"],
        env_var="LOCUST_ARRIVAL",
        help="Open-loop arrival process",
    )


_schedule: Schedule | None = None


@events.test_start.add_listener
def _start_schedule(environment: Any, **_: Any) -> None:
    global _schedule
    rate = float(getattr(environment.parsed_options, "rate", 0) or 0)
    arrival = getattr(environment.parsed_options, "arrival", "constant")
    _schedule = Schedule(rate, arrival) if rate > 0 else None


def payloads(client: LifeloopClient, options: Any) -> list[np.ndarray]:
    """Request tensors: images from --payload-dir preprocessed by the served model's config,
    or a pool of seeded synthetic tensors of the model's input shape."""
    info = client.model_info()
    batch = max(1, int(getattr(options, "batch_size", 1) or 1))
    folder = getattr(options, "payload_dir", "") or ""
    if folder:
        from pathlib import Path

        from lifeloop.client import to_samples

        files = sorted(p for p in Path(folder).rglob("*") if p.is_file())[:256]
        samples = to_samples(files, info)
    else:
        samples = (
            np.random.default_rng(0)
            .standard_normal((_SYNTHETIC_POOL, *info.input_dims))
            .astype(np.float32)
        )
    count = max(1, len(samples) // batch)
    return [
        np.ascontiguousarray(np.resize(samples[i * batch :], (batch, *info.input_dims)))
        for i in range(count)
    ]


class TritonUser(User):
    """Sends classifier requests through lifeloop's client and reports each to Locust."""

    abstract = True
    protocol = "grpc"
    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.model = getattr(options, "model", "classifier") or "classifier"
        self.version = int(getattr(options, "model_version", 0) or 0) or None
        self.client = LifeloopClient(self.host or "", self.protocol, model=self.model)
        self.requests = [self.client.prepare(t) for t in payloads(self.client, options)]
        self.turn = 0

    def on_stop(self) -> None:
        # An open grpc channel keeps a headless Locust process alive after the run.
        self.client.close()

    @task
    def classify(self) -> None:
        late_ms = 0.0
        if _schedule is not None:
            slot = _schedule.take()
            wait = slot - time.perf_counter()
            if wait > 0:
                gevent.sleep(wait)
            late_ms = max(0.0, (time.perf_counter() - slot) * 1000)
        prepared = self.requests[self.turn % len(self.requests)]
        self.turn += 1
        started = time.perf_counter()
        name, error, length = self.model, None, 0
        try:
            logits, version = self.client.send(prepared, version=self.version)
            name, length = f"{self.model} v{version}", int(logits.nbytes)
        except ClientError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type=self.protocol,
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            response=None,
            context={"late_ms": late_ms},
            exception=error,
        )


class TritonHttpUser(TritonUser):
    """tritonclient.http, whose geventhttpclient transport is gevent-native."""

    protocol = "http"


class TritonGrpcUser(TritonUser):
    """tritonclient.grpc under grpc's gevent support."""

    protocol = "grpc"


if __name__ == "__main__":
    print(__file__)  # `locust -f "$(python -m lifeloop.loadtest.locustfile)"`
