"""What one `lifeloop bench` run found, typed: the run's parameters, each ratio with its target
and the two figures it divides, and the CPU each request cost. It renders bench.json (every
measurement in full) and bench.md (the page docs/benchmarks.md is a copy of)."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lifeloop.errors import LoadTestError
from lifeloop.loadtest.cpu import CpuSplit

# bench.json's sections of full measurements, in the order the file has always had them.
SECTIONS = (
    "raw",
    "served",
    "batching",
    "harness",
    "routing",
    "precision",
    "cache",
    "pruning",
    "cascade",
)


@dataclass(frozen=True, kw_only=True)
class BenchModel:
    """A model the bench publishes with random weights and measures."""

    name: str
    arch: str
    size: int
    classes: int
    raw_batches: tuple[int, ...]
    precision: bool = False  # also served as INT8 and FP16 against fp32
    cache: bool = False  # also through a router to a copy with Triton's response cache
    prune: bool = False  # also structurally pruned at half its channels, fp32 and INT8
    encoded: bool = False  # also JPEG photos through its router's image ensemble

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def describe(self) -> str:
        batches = ", ".join(str(b) for b in self.raw_batches)
        text = (
            f"{self.name}: {self.arch} at {self.size}x{self.size}, {self.classes} classes, "
            f"random weights; raw onnxruntime at batch {batches}"
        )
        text += "; also INT8 and FP16" if self.precision else ""
        text += "; also with the response cache" if self.cache else ""
        text += "; also pruned at 0.5, fp32 and INT8" if self.prune else ""
        return text + (
            "; also JPEG photos through its router's image ensemble" if self.encoded else ""
        )


@dataclass(frozen=True, kw_only=True)
class Machine:
    cpus: int | None
    platform: str
    python: str

    @classmethod
    def here(cls) -> Machine:
        return cls(
            cpus=os.cpu_count(), platform=platform.platform(), python=platform.python_version()
        )

    def describe(self) -> str:
        return f"{self.cpus} CPUs, {self.platform}, Python {self.python}"


@dataclass(frozen=True, kw_only=True)
class BenchRun:
    """How the figures were taken; they compare only with runs taken the same way."""

    out: Path
    models: tuple[BenchModel, ...]
    window_s: float
    max_s: float
    concurrency: int  # requests in flight for every served figure
    locust_users: int  # Locust users, and lean coroutines, for the harness figures
    precision_rounds: int
    router_settings: str
    machine: Machine
    versions: Mapping[str, str]
    date: str  # ISO date the run started
    # perf_analyzer's stability rule as `stats.Meter` applies it by default.
    stable_count: int = 3
    stable_tolerance: float = 0.10

    def __post_init__(self) -> None:
        if not self.models:
            raise LoadTestError("models must name at least one model, got none", setting="models")
        if not self.window_s > 0:
            raise LoadTestError(f"window_s must be > 0 s, got {self.window_s}", setting="window_s")
        if not self.max_s >= self.window_s:
            raise LoadTestError(
                f"max_s must be at least the window ({self.window_s:g} s), got {self.max_s}",
                setting="max_s",
            )
        for name in ("concurrency", "locust_users", "precision_rounds"):
            value = getattr(self, name)
            if value < 1:
                raise LoadTestError(f"{name} must be >= 1, got {value}", setting=name)

    @property
    def method(self) -> str:
        return (
            f"closed loop; windows of {self.window_s:g} s or more; stable when the last "
            f"{self.stable_count} agree within {self.stable_tolerance:.0%}; "
            f"at most {self.max_s:g} s per figure"
        )

    @property
    def command(self) -> str:
        """The command line that takes the same figures again."""
        return (
            f"lifeloop bench --out {self.out} --window {self.window_s:g} "
            f"--max-seconds {self.max_s:g} --concurrency {self.concurrency} "
            f"--users {self.locust_users}"
        )


@dataclass(frozen=True, kw_only=True)
class Figure:
    """One throughput, named for the side of its comparison it stands on."""

    label: str
    value: float


@dataclass(frozen=True, kw_only=True)
class Row:
    """The two figures a ratio divides, measured side by side on one model."""

    model: str
    numerator: Figure
    denominator: Figure
    unit: str  # "images/s" or "requests/s"
    notes: tuple[str, ...] = ()

    @property
    def figures(self) -> str:
        return (
            f"{_rate(self.numerator.value)} {self.numerator.label} / "
            f"{_rate(self.denominator.value)} {self.denominator.label} {self.unit}"
        )


@dataclass(frozen=True, kw_only=True)
class Ratio:
    name: str  # its key in bench.json's "ratios"
    value: float
    row: Row
    measured_as: str
    target: float | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise LoadTestError("a ratio's name must not be empty", setting="name")
        if not (math.isfinite(self.value) and self.value >= 0):
            raise LoadTestError(
                f"value of ratio {self.name!r} must be finite and >= 0, got {self.value}",
                setting="value",
            )
        if self.target is not None and not self.target > 0:
            raise LoadTestError(
                f"target of ratio {self.name!r} must be > 0, got {self.target}", setting="target"
            )

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.value >= self.target

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "none"
        return f"≥ {self.target:g}, " + ("met" if self.met else "missed")


@dataclass(frozen=True, kw_only=True)
class CpuRow:
    """CPU per request by process over one measurement. `busy_known` is false where the span
    holds more than the measurement (a Locust run's includes Locust starting up), so no share
    of the cores is given."""

    measurement: str
    split: CpuSplit
    busy_known: bool = True

    @property
    def busy(self) -> float | None:
        return self.split.busy if self.busy_known else None

    def to_dict(self) -> dict[str, float | None]:
        return {**self.split.to_dict(), "busy": self.busy}

    def cells(self) -> tuple[str, ...]:
        split = self.split
        figures = (split.client_ms, split.tritonserver_ms, split.stubs_ms, split.total_ms)
        busy = "" if self.busy is None else f"{self.busy:.0%}"
        return (self.measurement, *(f"{v:.3f}" for v in figures), busy)


@dataclass(frozen=True, kw_only=True)
class RawCpu:
    """Raw onnxruntime's CPU per image at its best batch size: the least a request can cost."""

    model: str
    batch: int
    ms_per_image: float

    def cells(self) -> tuple[str, ...]:
        """A row of the CPU table, in its total column."""
        what = f"{self.model} raw onnxruntime, per image at batch {self.batch}"
        return (what, "", "", "", f"{self.ms_per_image:.3f}", "")


CPU_COLUMNS = ("measurement", "client", "tritonserver", "stubs", "total", "cores busy")


@dataclass(frozen=True, kw_only=True)
class BenchResult:
    run: BenchRun
    ratios: tuple[Ratio, ...]
    cpu: tuple[CpuRow, ...]
    raw_cpu: tuple[RawCpu, ...]
    # Every measurement in full (windows, latency percentiles, per-round figures), by section,
    # as bench.json records it; the typed fields above are what is printed.
    details: Mapping[str, Mapping[str, Any]]

    def __post_init__(self) -> None:
        names = [r.name for r in self.ratios]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise LoadTestError(f"ratios must have unique names, got {doubled} twice")
        if set(self.details) != set(SECTIONS):
            raise LoadTestError(
                f"details must hold the sections {list(SECTIONS)}, got {sorted(self.details)}",
                setting="details",
            )

    @property
    def rows(self) -> tuple[Row, ...]:
        return tuple(r.row for r in self.ratios)

    def ratio(self, name: str) -> Ratio:
        for ratio in self.ratios:
            if ratio.name == name:
                return ratio
        raise LoadTestError(f"no ratio {name!r}; the run has {[r.name for r in self.ratios]}")

    def cpu_cells(self) -> list[tuple[str, ...]]:
        """The CPU table's rows: each measurement's split, then raw onnxruntime's per image."""
        return [row.cells() for row in self.cpu] + [raw.cells() for raw in self.raw_cpu]

    def to_dict(self) -> dict[str, Any]:
        """bench.json's document."""
        return {
            "machine": asdict(self.run.machine),
            "method": self.run.method,
            **{section: self.details[section] for section in SECTIONS},
            "ratios": {r.name: r.value for r in self.ratios},
            "targets": {
                r.name: {"target": r.target, "measured": r.value, "met": r.met}
                for r in self.ratios
                if r.target is not None
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_markdown(self) -> str:
        run = self.run
        versions = ", ".join(f"{name} {v}" for name, v in sorted(run.versions.items()))
        parameters = (
            ("date", run.date),
            ("models", "<br>".join(m.describe() for m in run.models)),
            ("method", run.method),
            ("requests in flight", str(run.concurrency)),
            ("Locust users (harness)", str(run.locust_users)),
            ("precision rounds", str(run.precision_rounds)),
            ("router", run.router_settings),
            ("machine", run.machine.describe()),
            ("versions", versions),
        )
        lines = [
            "<!-- generated by `lifeloop bench`, do not edit: rerun it and copy its bench.md -->",
            "# Benchmarks",
            "",
            f"Generated by `lifeloop bench` on {run.date}; do not edit by hand. To take these "
            "figures again:",
            "",
            "```",
            run.command,
            "```",
            "",
            "Each ratio divides two figures measured side by side in this one run; ratios, not",
            "absolute figures, are what carry across machines.",
            "",
            "## Ratios",
            "",
            *_table(
                ("ratio", "measured", "target", "how it is measured"),
                ((f"`{r.name}`", f"{r.value:.3f}", r.verdict, r.measured_as) for r in self.ratios),
            ),
            "",
            "## Side by side",
            "",
            *_table(
                ("ratio", "model", "figures", "notes"),
                (
                    (f"`{r.name}`", r.row.model, r.row.figures, "; ".join(r.row.notes))
                    for r in self.ratios
                ),
            ),
            "",
            "## CPU per request (ms) by process",
            "",
            f"Batching rows at {run.concurrency} requests in flight, harness rows at "
            f"{run.locust_users} users.",
            "A Locust row's client is the Locust process's own CPU over its measured windows;",
            "its span also holds Locust starting up, so no share of the cores is given.",
            "",
            *_table(CPU_COLUMNS, self.cpu_cells()),
            "",
            "## Run",
            "",
            *_table(("parameter", "value"), parameters),
            "",
        ]
        return "\n".join(lines)

    def write(self, folder: Path) -> tuple[Path, Path]:
        """bench.json and bench.md, side by side in `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        json_path, md_path = folder / "bench.json", folder / "bench.md"
        json_path.write_text(self.to_json())
        md_path.write_text(self.to_markdown())
        return json_path, md_path


# Where the generated part of a docs page ends; what follows it is written by hand (analyses,
# profiles) and is kept when the page is regenerated.
GENERATED_END = "<!-- end of the part lifeloop bench generates -->"


def update_page(page: Path, markdown: str) -> Path:
    """Replace the generated part of `page` (all of it, for a new page or one without the
    marker) with `markdown`, keeping what stands below the marker."""
    kept = ""
    if page.is_file():
        old = page.read_text()
        if GENERATED_END in old:
            kept = old.split(GENERATED_END, 1)[1]
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(markdown.rstrip() + "\n\n" + GENERATED_END + (kept or "\n"))
    return page


def _rate(value: float) -> str:
    return f"{value:,.1f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows)]
