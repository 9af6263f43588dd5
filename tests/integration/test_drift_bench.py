"""`lifeloop bench-drift` on the digits through the CLI: the drift test's detection and
false-alarm rates on small windows of a real classifier's answers."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from lifeloop.cli import app

runner = CliRunner()


def test_bench_drift_sees_every_shift_and_stays_quiet_on_clean_windows(tmp_path) -> None:
    """40 windows of 100 answers per shift, against a reference of 150 held-out digits."""
    args = ["bench-drift", "--data", "digits", "--out", tmp_path, "--windows", 40]
    args += ["--window", 100, "--reference", 150, "--epochs", 4]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "drift.json").read_text())
    shifts = report["shifts"]
    assert set(shifts) == {"none", "blur", "noise", "brightness", "prior"}
    assert shifts["none"]["alarm_rate"] <= 0.1, shifts
    for name in ("blur", "noise", "brightness", "prior"):
        assert shifts[name]["alarm_rate"] >= 0.9, (name, shifts[name])
        assert shifts[name]["median_p"] < 0.05
    assert {row["met"] for row in report["targets"]} == {True}, report["targets"]
    assert "Gaussian blur, sigma 1 px" in result.output and "drift.json" in result.output


def test_bench_drift_refuses_windows_the_test_split_cannot_fill(tmp_path) -> None:
    args = ["bench-drift", "--data", "digits", "--out", str(tmp_path), "--reference", "5000"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "lower --reference or --window" in result.output
