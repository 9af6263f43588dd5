"""The bench's typed result fed with fixed numbers (those of a real run): bench.json keeps the
keys its readers use, bench.md and the CLI show the same figures, and bad values are refused."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.cli.measure import _print_bench
from lifeloop.errors import LoadTestError
from lifeloop.loadtest.bench import MODELS
from lifeloop.loadtest.bench_result import (
    GENERATED_END,
    SECTIONS,
    BenchResult,
    BenchRun,
    CpuRow,
    Figure,
    Machine,
    Ratio,
    RawCpu,
    Row,
    update_page,
)
from lifeloop.loadtest.cpu import CpuSplit
from lifeloop.loadtest.stats import Meter


def _run(**changes: object) -> BenchRun:
    fields: dict[str, object] = {
        "out": Path("runs/bench"),
        "models": MODELS,
        "window_s": 2.0,
        "max_s": 24.0,
        "concurrency": 32,
        "locust_users": 32,
        "precision_rounds": 2,
        "router_settings": "prediction log on SQLite, every input kept, top-5",
        "machine": Machine(cpus=2, platform="Linux-6.1-x86_64", python="3.11.9"),
        "versions": {"onnxruntime": "1.20.1", "tritonserver": "2.51.0"},
        "date": "2026-12-03",
    }
    fields.update(changes)
    return BenchRun(**fields)  # type: ignore[arg-type]


def _ratio(name: str, value: float, row: Row, target: float | None = None) -> Ratio:
    return Ratio(name=name, value=value, row=row, measured_as=f"how {name} is taken", target=target)


def _row(model: str, first: tuple[str, float], second: tuple[str, float], unit: str) -> Row:
    return Row(
        model=model,
        numerator=Figure(label=first[0], value=first[1]),
        denominator=Figure(label=second[0], value=second[1]),
        unit=unit,
    )


def _split(client: float, server: float, stubs: float, *, requests: int = 2516) -> CpuSplit:
    return CpuSplit(
        requests=requests,
        wall_s=1.0,
        cores=2,
        client_ms=client,
        tritonserver_ms=server,
        stubs_ms=stubs,
    )


DETAILS = {
    "raw": {"resnet18": {"best_batch": 16, "images_per_s": 53.1, "cpu_ms_per_image": 34.4}},
    "served": {"resnet18": {"concurrency": 32, "throughput": 55.6}},
    "batching": {"small_cnn": {"concurrency": 32, "on": {}, "off": {}}},
    "harness": {"grpc": {"model": "small_cnn", "users": 32}},
    "routing": {"resnet18": {"router": "resnet18_router"}},
    "precision": {"resnet18": {"rounds": 2}, "accuracy": {"model": "small_cnn"}},
    "cache": {"resnet18": {"concurrency": 32, "cache_mb": 256}},
    "pruning": {"resnet18": {"concurrency": 32, "ratio": 0.5}},
    "cascade": {"wide_resnet50_2": {"concurrency": 32, "max_drop": 0.5}},
}


def _result() -> BenchResult:
    return BenchResult(
        run=_run(),
        ratios=(
            _ratio(
                "served_over_raw_resnet18",
                1.047,
                _row("resnet18", ("served", 55.6), ("raw", 53.1), "images/s"),
                target=0.9,
            ),
            _ratio(
                "batching_gain_small_cnn",
                1.493,
                _row("small_cnn", ("on", 2482.0), ("off", 1662.0), "requests/s"),
                target=3.0,
            ),
            _ratio(
                "routed_over_direct_small_cnn",
                0.64,
                _row("small_cnn", ("routed", 1607.0), ("direct", 2511.0), "requests/s"),
            ),
            Ratio(
                name="int8_over_fp32_resnet18",
                value=2.812,
                row=Row(
                    model="resnet18",
                    numerator=Figure(label="int8", value=150.8),
                    denominator=Figure(label="fp32", value=54.6),
                    unit="images/s",
                    notes=("rounds 2.75, 2.88", "top-1 +0.84 points, 99.2% agreement"),
                ),
                measured_as="served images/s as INT8 ÷ fp32",
                target=1.5,
            ),
        ),
        cpu=(
            CpuRow(measurement="small_cnn batching on", split=_split(0.184, 0.153, 0.434)),
            CpuRow(
                measurement="small_cnn Locust grpc",
                split=_split(0.501, 0.240, 0.656),
                busy_known=False,
            ),
        ),
        raw_cpu=(RawCpu(model="small_cnn", batch=128, ms_per_image=0.229),),
        details=DETAILS,
    )


def test_bench_json_keeps_the_keys_and_order_its_readers_use() -> None:
    document = json.loads(_result().to_json())
    assert list(document) == ["machine", "method", *SECTIONS, "ratios", "targets"]
    assert document["machine"] == {"cpus": 2, "platform": "Linux-6.1-x86_64", "python": "3.11.9"}
    assert document["method"] == (
        "closed loop; windows of 2 s or more; stable when the last 3 agree within 10%; "
        "at most 24 s per figure"
    )
    for section in SECTIONS:
        assert document[section] == DETAILS[section]
    assert document["ratios"] == {
        "served_over_raw_resnet18": 1.047,
        "batching_gain_small_cnn": 1.493,
        "routed_over_direct_small_cnn": 0.64,
        "int8_over_fp32_resnet18": 2.812,
    }
    # Only ratios with a target are in "targets".
    assert document["targets"] == {
        "served_over_raw_resnet18": {"target": 0.9, "measured": 1.047, "met": True},
        "batching_gain_small_cnn": {"target": 3.0, "measured": 1.493, "met": False},
        "int8_over_fp32_resnet18": {"target": 1.5, "measured": 2.812, "met": True},
    }


def test_a_locust_cpu_split_gives_no_share_of_the_cores() -> None:
    lean, locust = _result().cpu
    assert lean.to_dict() == lean.split.to_dict()
    assert lean.to_dict()["busy"] == pytest.approx(0.771 * 2516 / 1000 / 2)
    assert locust.to_dict()["busy"] is None
    assert locust.to_dict()["total_ms"] == pytest.approx(0.501 + 0.240 + 0.656)


def test_write_puts_bench_json_and_bench_md_side_by_side(tmp_path: Path) -> None:
    result = _result()
    json_path, md_path = result.write(tmp_path / "bench")
    assert (json_path, md_path) == (tmp_path / "bench/bench.json", tmp_path / "bench/bench.md")
    assert json.loads(json_path.read_text()) == result.to_dict()
    assert md_path.read_text() == result.to_markdown()


def test_a_regenerated_page_keeps_what_stands_below_its_marker(tmp_path: Path) -> None:
    page = tmp_path / "docs" / "benchmarks.md"
    update_page(page, "# old figures\n")  # a new page: all of it generated, then the marker
    assert page.read_text() == f"# old figures\n\n{GENERATED_END}\n"
    page.write_text(page.read_text() + "## Measured by hand\n\npy-spy says ...\n")
    update_page(page, _result().to_markdown())
    text = page.read_text()
    assert "# old figures" not in text and text.startswith(_result().to_markdown().rstrip())
    assert text.endswith(f"{GENERATED_END}\n## Measured by hand\n\npy-spy says ...\n")


def test_markdown_says_it_is_generated_and_how_to_take_the_figures_again() -> None:
    page = _result().to_markdown()
    assert page.splitlines()[0].startswith("<!-- generated by `lifeloop bench`, do not edit")
    assert "on 2026-12-03" in page
    assert (
        "lifeloop bench --out runs/bench --window 2 --max-seconds 24 --concurrency 32 --users 32"
        in page
    )


def test_markdown_tables_hold_ratios_with_targets_and_the_figures_they_divide() -> None:
    lines = _result().to_markdown().splitlines()
    assert "| ratio | measured | target | how it is measured |" in lines
    assert (
        "| `served_over_raw_resnet18` | 1.047 | ≥ 0.9, met | how served_over_raw_resnet18 is "
        "taken |" in lines
    )
    assert any(
        line.startswith("| `batching_gain_small_cnn` | 1.493 | ≥ 3, missed |") for line in lines
    )
    assert any(
        line.startswith("| `routed_over_direct_small_cnn` | 0.640 | none |") for line in lines
    )
    assert (
        "| `batching_gain_small_cnn` | small_cnn | 2,482.0 on / 1,662.0 off requests/s |  |"
        in lines
    )
    assert (
        "| `int8_over_fp32_resnet18` | resnet18 | 150.8 int8 / 54.6 fp32 images/s | "
        "rounds 2.75, 2.88; top-1 +0.84 points, 99.2% agreement |" in lines
    )


def test_markdown_has_the_cpu_split_and_the_run_parameters() -> None:
    lines = _result().to_markdown().splitlines()
    assert "| small_cnn batching on | 0.184 | 0.153 | 0.434 | 0.771 | 97% |" in lines
    assert "| small_cnn Locust grpc | 0.501 | 0.240 | 0.656 | 1.397 |  |" in lines
    assert "| small_cnn raw onnxruntime, per image at batch 128 |  |  |  | 0.229 |  |" in lines
    assert "| requests in flight | 32 |" in lines
    assert "| router | prediction log on SQLite, every input kept, top-5 |" in lines
    assert "| machine | 2 CPUs, Linux-6.1-x86_64, Python 3.11.9 |" in lines
    assert "| versions | onnxruntime 1.20.1, tritonserver 2.51.0 |" in lines
    models = next(line for line in lines if line.startswith("| models |"))
    assert "resnet18: resnet18 at 224x224, 1000 classes" in models
    assert "raw onnxruntime at batch 1, 32, 128" in models


def test_markdown_escapes_a_pipe_inside_a_cell() -> None:
    page = BenchResult(
        run=_run(router_settings="log | keep"),
        ratios=(),
        cpu=(),
        raw_cpu=(),
        details={s: {} for s in SECTIONS},
    ).to_markdown()
    assert "| router | log \\| keep |" in page.splitlines()


def test_cli_prints_the_ratios_and_the_cpu_split_from_the_result() -> None:
    console = Console(record=True, width=240)
    _print_bench(_result(), console)
    text = console.export_text()
    ratio_line = next(line for line in text.splitlines() if "served_over_raw_resnet18" in line)
    assert "1.047" in ratio_line and "≥ 0.9, met" in ratio_line
    assert "55.6 served / 53.1 raw images/s" in ratio_line
    missed = next(line for line in text.splitlines() if "batching_gain_small_cnn" in line)
    assert "≥ 3, missed" in missed and "2,482.0 on / 1,662.0 off requests/s" in missed
    int8 = next(line for line in text.splitlines() if "int8_over_fp32_resnet18" in line)
    assert "rounds 2.75, 2.88; top-1 +0.84 points" in int8
    assert "CPU per request (ms) by process, at concurrency 32 (harness: 32 users)" in text
    cpu_line = next(line for line in text.splitlines() if "small_cnn batching on" in line)
    cells = [cell.strip() for cell in cpu_line.split("│") if cell.strip()]
    assert cells == ["small_cnn batching on", "0.184", "0.153", "0.434", "0.771", "97%"]
    raw_line = next(line for line in text.splitlines() if "raw onnxruntime, per image" in line)
    assert "batch 128" in raw_line and "0.229" in raw_line
    assert "stable when the last 3 agree within 10%" in text


def test_stability_rule_in_the_run_is_the_one_the_meter_applies() -> None:
    defaults = inspect.signature(Meter).parameters
    run = _run()
    assert (run.stable_count, run.stable_tolerance) == (
        defaults["count"].default,
        defaults["tolerance"].default,
    )


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"locust_users": 0}, "locust_users"),
        ({"window_s": 0.0}, "window_s"),
        ({"max_s": 1.0}, "max_s"),
        ({"models": ()}, "models"),
    ],
)
def test_a_run_that_cannot_measure_is_refused_naming_its_setting(
    changes: dict[str, object], setting: str
) -> None:
    with pytest.raises(LoadTestError) as caught:
        _run(**changes)
    assert caught.value.setting == setting
    assert str(caught.value).startswith(setting)


def test_a_ratio_that_is_not_a_number_is_refused() -> None:
    row = _row("resnet18", ("a", 1.0), ("b", 0.0), "requests/s")
    with pytest.raises(LoadTestError, match="value of ratio 'x' must be finite"):
        _ratio("x", float("nan"), row)
    with pytest.raises(LoadTestError, match="target of ratio 'x' must be > 0"):
        _ratio("x", 1.0, row, target=0.0)


def test_a_result_with_a_ratio_twice_is_refused() -> None:
    ratio = _result().ratios[0]
    with pytest.raises(LoadTestError, match="unique names"):
        BenchResult(run=_run(), ratios=(ratio, ratio), cpu=(), raw_cpu=(), details=DETAILS)


def test_bench_refuses_a_bad_flag_before_it_exports_anything(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "bench"), "--users", "0"])
    assert result.exit_code == 1, result.output
    # The library's message; `with_flag` is what turns `locust_users` into `--users`.
    assert result.output.startswith("error: ") and "must be >= 1, got 0" in result.output
    assert not (tmp_path / "bench").exists()
