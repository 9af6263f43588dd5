"""perf_analyzer.csv built from fixed numbers: perf_analyzer's header text, one row of the merged
windows in whole microseconds, and empty cells where lifeloop measures nothing."""

from __future__ import annotations

import csv

import pytest

from lifeloop.loadtest import LoadTestConfig, LoadTestError
from lifeloop.loadtest.config import CsvFormat
from lifeloop.loadtest.report import (
    build_report,
    perf_analyzer_rows,
    write_perf_analyzer_csv,
    write_report,
)
from lifeloop.loadtest.stats import Sample, window

# perf_analyzer's `-f` header with --verbose-csv (a model neither decoupled nor cached), after
# its first column, as its ReportWriter writes it.
PERF_ANALYZER_TAIL = (
    "Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
    "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
    "p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,request/response,response wait"
)
SERVER = {
    "requests": 100,
    "executions": 50,
    "queue_ms": 1.5,
    "compute_input_ms": 0.25,
    "compute_infer_ms": 20.0,
    "compute_output_ms": 0.125,
    "request_ms": 23.0,
    "average_batch": 2.0,
}


def report_of(config: LoadTestConfig, server: dict[str, float] | None) -> dict:
    """100 requests of 1..100 ms over three 1 s windows, all measured."""
    samples = [Sample(end_s=i * 0.03, latency_ms=float(i + 1)) for i in range(100)]
    windows = [window(samples, float(a), float(a + 1)) for a in range(3)]
    return build_report(
        config=config,
        samples=samples,
        windows=windows,
        window_splits=[None] * 3,
        measured=(0, 3),
        stable=True,
        server=server,
        metrics_available=server is not None,
    )


def read(path) -> tuple[str, list[dict[str, str]]]:
    with open(path, newline="") as handle:
        header = handle.readline()
        handle.seek(0)
        return header, list(csv.DictReader(handle))


def test_closed_loop_row_has_perf_analyzers_columns_in_microseconds(tmp_path) -> None:
    config = LoadTestConfig(
        url="localhost:8001", users=4, batch_size=2, csv_format=CsvFormat.PERF_ANALYZER
    )
    write_perf_analyzer_csv(report_of(config, SERVER), tmp_path / "perf_analyzer.csv")
    header, rows = read(tmp_path / "perf_analyzer.csv")
    assert header == f"Concurrency,{PERF_ANALYZER_TAIL}\n"
    assert rows == [
        {
            "Concurrency": "4",
            # 100 requests of 2 samples in 3 s, printed as C++ streams a double.
            "Inferences/Second": "66.6667",
            "Client Send": "",
            # The mean (50.5 ms) less queue and compute (21.875 ms).
            "Network+Server Send/Recv": "28625",
            "Server Queue": "1500",
            "Server Compute Input": "250",
            "Server Compute Infer": "20000",
            "Server Compute Output": "125",
            "Client Recv": "",
            "p50 latency": "50500",
            "p90 latency": "90100",
            "p95 latency": "95050",
            "p99 latency": "99010",
            "Avg latency": "50500",
            "request/response": "",
            "response wait": "",
        }
    ]


def test_open_loop_starts_with_the_request_rate_and_leaves_the_missing_split_empty(
    tmp_path,
) -> None:
    config = LoadTestConfig(url="localhost:8001", rate=40.0, csv_format=CsvFormat.PERF_ANALYZER)
    write_perf_analyzer_csv(report_of(config, None), tmp_path / "perf_analyzer.csv")
    header, [row] = read(tmp_path / "perf_analyzer.csv")
    assert header == f"Request Rate,{PERF_ANALYZER_TAIL}\n"
    assert row["Request Rate"] == "40" and row["Inferences/Second"] == "33.3333"
    empty = [column for column, value in row.items() if value == ""]
    assert empty == [
        "Client Send",
        "Network+Server Send/Recv",
        "Server Queue",
        "Server Compute Input",
        "Server Compute Infer",
        "Server Compute Output",
        "Client Recv",
        "request/response",
        "response wait",
    ]


def test_a_run_that_measured_nothing_writes_the_header_alone(tmp_path) -> None:
    config = LoadTestConfig(url="localhost:8001")
    report = build_report(
        config=config,
        samples=[],
        windows=[],
        window_splits=[],
        measured=(0, 0),
        stable=False,
        server=None,
        metrics_available=False,
    )
    assert perf_analyzer_rows(report) == []
    write_perf_analyzer_csv(report, tmp_path / "perf_analyzer.csv")
    assert (tmp_path / "perf_analyzer.csv").read_text() == f"Concurrency,{PERF_ANALYZER_TAIL}\n"


def test_csv_format_survives_the_trip_to_the_locust_process_and_rejects_unknown_names() -> None:
    config = LoadTestConfig(url="localhost:8001", csv_format=CsvFormat.PERF_ANALYZER)
    assert LoadTestConfig.from_json(config.to_json()).csv_format is CsvFormat.PERF_ANALYZER
    assert LoadTestConfig(url="localhost:8001").csv_format is CsvFormat.WINDOWS
    with pytest.raises(LoadTestError, match="csv_format 'excel' is not one of") as caught:
        LoadTestConfig(url="localhost:8001", csv_format="excel")
    assert caught.value.setting == "csv_format"


@pytest.mark.parametrize("csv_format", list(CsvFormat))
def test_write_report_adds_perf_analyzer_csv_only_when_asked(tmp_path, csv_format) -> None:
    config = LoadTestConfig(url="localhost:8001", out=str(tmp_path), csv_format=csv_format)
    samples = [Sample(end_s=i * 0.03, latency_ms=float(i + 1)) for i in range(100)]
    write_report(
        config=config,
        samples=samples,
        windows=[window(samples, float(a), float(a + 1)) for a in range(3)],
        window_splits=[None] * 3,
        measured=(0, 3),
        stable=True,
        server=None,
        metrics_available=False,
    )
    assert (tmp_path / "windows.csv").exists()
    assert (tmp_path / "perf_analyzer.csv").exists() is (csv_format is CsvFormat.PERF_ANALYZER)
