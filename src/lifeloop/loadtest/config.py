"""What one load test measures and how; validated when built, shipped to the Locust process
as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lifeloop.client import split_url
from lifeloop.errors import LoadTestError


class CsvFormat(StrEnum):
    """Which CSV files a load test writes besides report.json: windows.csv always, and with
    `perf_analyzer` also perf_analyzer.csv in the columns of perf_analyzer's `-f` file."""

    WINDOWS = "windows"
    PERF_ANALYZER = "perf_analyzer"


@dataclass(frozen=True, kw_only=True)
class LoadTestConfig:
    url: str
    model: str = "classifier"
    protocol: str = "grpc"
    users: int = 16
    spawn_rate: float = 16.0
    duration_s: float = 30.0
    rate: float | None = None  # open loop when set (requests per second)
    arrival: str = "constant"
    window_s: float | None = None  # default: duration / 8, within 1..5 s
    stability_windows: int = 3
    stability_tolerance: float = 0.10
    late_threshold_ms: float = 1.0
    metrics_url: str | None = None
    payload_dir: str | None = None
    batch_size: int = 1
    model_version: int | None = None
    out: str = "runs/loadtest"
    csv_format: CsvFormat = CsvFormat.WINDOWS

    def __post_init__(self) -> None:
        # From JSON the format arrives as its string.
        try:
            object.__setattr__(self, "csv_format", CsvFormat(self.csv_format))
        except ValueError:
            raise LoadTestError(
                f"csv_format {self.csv_format!r} is not one of "
                f"{', '.join(f.value for f in CsvFormat)}",
                setting="csv_format",
            ) from None
        if self.duration_s <= 0:
            raise LoadTestError(
                f"duration_s must be > 0 seconds, got {self.duration_s:g}", setting="duration_s"
            )
        if self.users < 1:
            raise LoadTestError(f"users must be >= 1, got {self.users}", setting="users")
        if self.spawn_rate <= 0:
            raise LoadTestError(
                f"spawn_rate must be > 0, got {self.spawn_rate:g}", setting="spawn_rate"
            )
        if self.rate is not None and self.rate <= 0:
            raise LoadTestError(f"rate must be > 0 requests/s, got {self.rate:g}", setting="rate")
        if self.arrival not in ("constant", "poisson"):
            raise LoadTestError(
                f"arrival {self.arrival!r} is not constant or poisson", setting="arrival"
            )
        if self.protocol not in ("grpc", "http"):
            raise LoadTestError(
                f"protocol {self.protocol!r} is not grpc or http", setting="protocol"
            )
        if self.batch_size < 1:
            raise LoadTestError(
                f"batch_size must be >= 1, got {self.batch_size}", setting="batch_size"
            )
        if self.window_s is not None and self.window_s <= 0:
            raise LoadTestError(
                f"window_s must be > 0 seconds, got {self.window_s:g}", setting="window_s"
            )

    @property
    def window(self) -> float:
        return self.window_s or min(5.0, max(1.0, self.duration_s / 8))

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    @property
    def host(self) -> str:
        address, protocol = split_url(self.url, self.protocol)
        return f"{protocol}://{address}"

    @property
    def metrics(self) -> str:
        """Triton's metrics endpoint: given, or the server's host on port 8002."""
        if self.metrics_url:
            return self.metrics_url
        host = urlsplit(self.host).hostname or "127.0.0.1"
        return f"http://{host}:8002/metrics"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoadTestConfig:
        data: dict[str, Any] = json.loads(text)
        return cls(**data)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)
