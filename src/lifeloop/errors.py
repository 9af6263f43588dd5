"""lifeloop's one exception tree.

    LifeloopError
    ├── DataError                  bad image folders, data sets that cannot be read
    ├── PreprocessingError         a preprocessing recipe that cannot be used
    │   └── ImageError             one image of a request that cannot be decoded or is too large
    ├── RequestError               one request of a batch that does not fit the model's inputs
    ├── CheckpointError            missing, corrupt or mismatched checkpoints
    ├── ExportError                unknown architecture, failed export
    │   ├── ParityError            ONNX disagrees with PyTorch
    │   └── QualityGateError       an INT8/FP16 version lost too much accuracy
    ├── RepositoryError            bad repository paths, configs, manifests, a full disk
    │   ├── VersionExistsError
    │   └── ManifestMismatchError  files differ from their manifest
    ├── ServerError                tritonserver would not start or stop
    ├── ClientError                unreachable server, unknown model, bad input
    │   └── ReplicaError           some servers did not reach the new state
    ├── StoreError                 the store cannot be opened or written
    │   ├── JournalFull            the spool holds its limit, or its disk refused the write
    │   ├── LogUnavailable         a batch could be neither stored nor spooled
│   └── StoreUnavailable       a feedback write that did not commit in time
    ├── FeedbackError              a label for an unknown request id, or no label
    ├── RolloutError               nothing to promote, nothing to roll back to
    ├── RetrainError               nothing to learn from, or a candidate the gate refused
    └── LoadTestError              a load test that cannot start or means nothing
        └── SoakError              a soak that cannot start

Every message is one line that names the thing at fault and what to change. The thing is also
kept as attributes (`model`, `version`, `url`) for callers that act on it. A message about a
setting starts with the setting's name (`duration_s must be > 0 seconds, got 0`) and `setting`
holds it; the CLI puts the name of its flag there (`--duration must be ...`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class LifeloopError(Exception):
    """Base of every error lifeloop raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        version: int | None = None,
        url: str | None = None,
        setting: str | None = None,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.version = version
        self.url = url
        self.setting = setting


class DataError(LifeloopError):
    """An image folder or data set that cannot be read or learned from."""


class PreprocessingError(LifeloopError):
    """A preprocessing recipe that is incomplete or cannot be applied."""


class ImageError(PreprocessingError):
    """One image that is empty, too large, a decompression bomb, or not a format allowed."""


class RequestError(LifeloopError):
    """One request of a batch whose tensors do not fit the model; the others are answered."""


class CheckpointError(LifeloopError):
    """A checkpoint that is missing, unreadable, or does not fit its architecture."""


class ExportError(LifeloopError):
    """An architecture that is unknown or cannot be exported to ONNX."""


class ParityError(ExportError):
    """The exported model does not answer like the PyTorch model; nothing was published."""


class QualityGateError(ExportError):
    """A reduced-precision export lost too much against fp32; nothing was published.
    `report` is the gate's QualityReport (format, failures, the measured figures)."""

    def __init__(self, report: Any) -> None:
        self.report = report
        super().__init__(
            f"{report.format} refused, nothing published: " + "; ".join(report.failures)
        )


class RepositoryError(LifeloopError):
    """A repository path, config or manifest that cannot be used."""


class VersionExistsError(RepositoryError):
    """A publish asked for a version number that is already taken."""


class ManifestMismatchError(RepositoryError):
    """A version's files differ from what its manifest recorded."""


class ServerError(LifeloopError):
    """tritonserver could not be prepared, started or stopped."""


class ClientError(LifeloopError):
    """An unreachable server, an unknown model, a failed request or unusable input."""


class ReplicaError(ClientError):
    """Some replicas did not reach the new state; `results` has every server's outcome
    (each with `url`, `ok` and `detail`)."""

    def __init__(self, results: Sequence[Any], what: str) -> None:
        self.results = list(results)
        lagging = [r for r in self.results if not r.ok]
        reached = [r.url for r in self.results if r.ok]
        super().__init__(
            f"{len(lagging)} of {len(self.results)} servers did not {what}: "
            + "; ".join(f"{r.url} ({r.detail})" for r in lagging)
            + (f"; {', '.join(reached)} did" if reached else "")
            + ". Bring the lagging servers back: started with --load-model=* (as `lifeloop "
            "serve` starts it) a server loads the repository as it now stands; a running one "
            "takes POST /v2/repository/models/<model>/load",
            url=lagging[0].url if lagging else None,
        )


class StoreError(LifeloopError):
    """The store cannot be opened or written."""


class JournalFull(StoreError):
    """The journal holds its size limit, or its disk refused the write."""


class LogUnavailable(StoreError):
    """The batch could be neither stored nor spooled, and `when_full` is `refuse`."""


class StoreUnavailable(StoreError):
    """The store could not take a write in time: nothing was acknowledged."""


class FeedbackError(LifeloopError):
    """Feedback that names an unknown request id, or carries no label."""


class RolloutError(LifeloopError):
    """A rollout change that cannot be made (no candidate to promote, nothing to roll back to)."""


class RetrainError(LifeloopError):
    """A retrain that has nothing to learn from, or a candidate the gate refused."""


class LoadTestError(LifeloopError):
    """A load test that cannot start, or whose measurement means nothing."""


class SoakError(LoadTestError):
    """A soak that cannot start: no version to cycle with, bad settings."""
