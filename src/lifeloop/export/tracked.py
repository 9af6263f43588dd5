"""An export as MLflow sees it: the parity and quality gates' figures in the run, each
published file linked by path and the sha256 its manifest records, and each published
version registered (lifeloop.tracking)."""

from __future__ import annotations

from lifeloop.export.pipeline import ExportResult
from lifeloop.tracking import Run


def log_export(run: Run, result: ExportResult) -> None:
    parity = result.parity
    run.params(
        {
            "parity.atol": parity.atol,
            "parity.rtol": parity.rtol,
            "parity.samples": parity.samples,
            "formats": ",".join(result.by_format),
        }
    )
    run.metrics(
        {"parity.max_abs_diff": parity.max_abs_diff, "parity.top1_agreement": parity.top1_agreement}
    )
    for fmt, report in result.quality.items():
        run.metrics(
            {
                f"{fmt}.accuracy": report.accuracy,
                f"{fmt}.fp32_accuracy": report.fp32_accuracy,
                f"{fmt}.agreement": report.agreement,
            }
        )
    for fmt, published in result.by_format.items():
        for entry in published.manifest.files:
            role = f"{fmt}.{entry.path}"
            run.link(role, published.path / entry.path, sha256=entry.sha256)
        run.tracker.register(published.model, published.version, published.path, run_id=run.run_id)
    run.tags({"lifeloop.version": result.published.version})
