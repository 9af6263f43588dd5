"""report.html in a real headless Chromium: a screenshot must show the plots drawn."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lifeloop.loadtest import LoadTestConfig
from lifeloop.loadtest.learning_report import write_learning_report
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


def screenshot(chromium: str, page: Path, tmp_path: Path, height: int = 2600) -> Path:
    """A headless Chromium's screenshot of `page`, 1200 pixels wide."""
    shot = tmp_path / f"{page.stem}.png"
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
            f"--window-size=1200,{height}",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return shot


def test_report_html_renders_its_plots_in_chromium(chromium: str, tmp_path: Path) -> None:
    synthetic_report(tmp_path)
    shot = screenshot(chromium, tmp_path / "report.html", tmp_path)
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[0] >= 2000
    # The throughput line, the p99 line and the compute-infer bar, in their plot colours.
    assert pixels_near(image, (31, 119, 180)) > 500
    assert pixels_near(image, (148, 103, 189)) > 200
    assert pixels_near(image, (140, 86, 75)) > 200  # queue segment of the split bar


def synthetic_learning(out: Path) -> Path:
    """A two-round learning.json's figures, as `lifeloop bench-learning` writes them."""
    classes = ["a", "b", "c", "d"]

    def learner(all_accuracy: float, per_class: list[float]) -> dict:
        return {
            "seen_accuracy": 0.9,
            "all_accuracy": all_accuracy,
            "per_class": dict(zip(classes, per_class, strict=True)),
            "labels": classes,
        }

    gate = {
        "accepted": True,
        "refused": [],
        "champion_accuracy": 0.45,
        "candidate_accuracy": 0.9,
        "feedback": 500,
        "replayed": 300,
    }
    rounds = [
        {
            "round": 0,
            "new_classes": ["a", "b"],
            "gate": None,
            "learners": {
                name: learner(0.45, [0.9, 0.9, 0, 0]) for name in ("lifeloop", "naive", "joint")
            },
        },
        {
            "round": 1,
            "new_classes": ["c", "d"],
            "gate": gate,
            "learners": {
                "lifeloop": learner(0.85, [0.85, 0.8, 0.9, 0.85]),
                "naive": learner(0.45, [0.0, 0.0, 0.95, 0.95]),
                "joint": learner(0.88, [0.9, 0.85, 0.9, 0.87]),
            },
        },
    ]
    forgetting = {
        "lifeloop": {"a": {"max_minus_final": 0.05}, "b": {"max_minus_final": 0.1}},
        "naive": {"a": {"max_minus_final": 0.9}, "b": {"max_minus_final": 0.9}},
        "joint": {"a": {"max_minus_final": 0.0}, "b": {"max_minus_final": 0.05}},
    }
    variant = {
        "rounds": rounds,
        "forgetting": forgetting,
        "class_order": classes,
        "seconds": 12.0,
        "settings": {"limit_per_class": None, "feedback_share": 0.5, "retrain": {"epochs": 4}},
    }
    result = {
        "data": "synthetic",
        "train_images": 4000,
        "variants": {"clean": variant},
        "targets": [{"target": "within 3 points of joint", "value": 0.03, "met": True}],
    }
    return write_learning_report(result, out / "learning.html")


def test_learning_html_renders_its_plots_in_chromium(chromium: str, tmp_path: Path) -> None:
    page = synthetic_learning(tmp_path)
    shot = screenshot(chromium, page, tmp_path, height=1800)
    image = np.asarray(Image.open(shot).convert("RGB"))
    # lifeloop's, naive's and joint's lines in both accuracy plots, and the heat map's
    # darkest red (naive forgot 0.9 of classes a and b).
    assert pixels_near(image, (31, 119, 180)) > 500
    assert pixels_near(image, (214, 39, 40)) > 500
    assert pixels_near(image, (44, 160, 44)) > 500
    assert pixels_near(image, (152, 12, 19)) > 2000
