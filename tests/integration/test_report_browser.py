"""report.html in a real headless Chromium: a screenshot must show the plots drawn."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lifeloop.loadtest import LoadTestConfig
from lifeloop.loadtest.report import write_report
from lifeloop.loadtest.stats import Sample, window
from tests.integration.debian import require_tool


@pytest.fixture(scope="session")
def chromium() -> str:
    return require_tool("chromium", "chromium")


def synthetic_report(out: Path) -> None:
    generator = np.random.default_rng(0)
    samples = [
        Sample(i / 200, float(4 + generator.gamma(2.0)), name="classifier v1") for i in range(1600)
    ]
    windows = [window(samples, s, s + 1.0) for s in range(8)]
    server = {
        "requests": 1200,
        "executions": 200,
        "queue_ms": 0.8,
        "compute_input_ms": 0.1,
        "compute_infer_ms": 2.5,
        "compute_output_ms": 0.4,
        "request_ms": 3.9,
        "average_batch": 6.0,
    }
    write_report(
        config=LoadTestConfig(url="127.0.0.1:8001", duration_s=8, window_s=1.0, out=str(out)),
        samples=samples,
        windows=windows,
        window_splits=[server] * 8,
        measured=(5, 8),
        stable=True,
        server=server,
        metrics_available=True,
    )


def pixels_near(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 30) -> int:
    return int((np.abs(image[:, :, :3].astype(int) - np.array(rgb)).sum(axis=2) < tolerance).sum())


def test_report_html_renders_its_plots_in_chromium(chromium: str, tmp_path: Path) -> None:
    synthetic_report(tmp_path)
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,2600",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            (tmp_path / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[0] >= 2000
    # The throughput line, the p99 line and the compute-infer bar, in their plot colours.
    assert pixels_near(image, (31, 119, 180)) > 500
    assert pixels_near(image, (148, 103, 189)) > 200
    assert pixels_near(image, (140, 86, 75)) > 200  # queue segment of the split bar
