"""A load test's files: report.json, windows.csv and report.html with its plots, and
perf_analyzer.csv when asked for.

The plots are matplotlib SVGs inlined in the page, so report.html is one self-contained file
that opens anywhere, offline."""

from __future__ import annotations

import csv
import html
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lifeloop.loadtest.config import CsvFormat, LoadTestConfig
from lifeloop.loadtest.stats import Latency, Sample, Window, merge

LATE_WARNING_SHARE = 0.01
# Locust warns when its process passes 90% CPU: past that, the load generator may be what
# limits the rate, not the server.
BUSY_GENERATOR_CORES = 0.9
# The header of perf_analyzer's `-f` file with --verbose-csv, for a model that is not decoupled
# and has no response cache (ReportWriter::GenerateReport in triton-inference-server/client),
# after its first column: "Concurrency" in closed loop, "Request Rate" in open loop.
PERF_ANALYZER_COLUMNS = (
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "Avg latency",
    "request/response",
    "response wait",
)


def build_report(
    *,
    config: LoadTestConfig,
    samples: Sequence[Sample],
    windows: Sequence[Window],
    window_splits: Sequence[dict[str, float] | None],
    measured: tuple[int, int],
    stable: bool,
    server: dict[str, float] | None,
    metrics_available: bool,
    generator_cpu_s: Sequence[float] | None = None,
) -> dict[str, Any]:
    """`generator_cpu_s`, when given, holds the load generator's own CPU seconds at each window
    boundary (one more entry than `windows`)."""
    first, last = measured
    chosen = list(windows[first:last])
    total = merge(samples, chosen, late_ms=config.late_threshold_ms) if chosen else None
    warnings: list[str] = []
    if not stable:
        warnings.append(
            f"not stable: the last {config.stability_windows} windows did not agree within "
            f"{config.stability_tolerance:.0%} before --duration ran out; figures merge them anyway"
        )
    if not metrics_available:
        warnings.append(f"no server-side split: Triton metrics at {config.metrics} did not answer")
    report: dict[str, Any] = {
        "config": asdict(config),
        "mode": "open loop" if config.open_loop else "closed loop",
        "stable": stable,
        "window_s": config.window,
        "windows_measured": len(chosen),
        "windows_total": len(windows),
        "warnings": warnings,
    }
    if total is None:
        report.update(all_failed=False, requests=0, failures=0, throughput_rps=0.0)
        return report
    per_name: dict[str, list[float]] = defaultdict(list)
    for sample in samples:
        if total.start_s <= sample.end_s < total.end_s and sample.ok:
            per_name[sample.name].append(sample.latency_ms)
    report.update(
        requests=total.requests,
        failures=total.failures,
        failures_by_cause=total.failures_by_cause,
        all_failed=total.requests > 0 and total.failures == total.requests,
        throughput_rps=total.throughput,
        latency_ms=asdict(total.latency),
        per_name={
            name: {
                "requests": len(values),
                "throughput_rps": len(values) / total.seconds,
                **{
                    k: v
                    for k, v in asdict(Latency.of(values)).items()
                    if k in ("mean", "p50", "p99")
                },
            }
            for name, values in sorted(per_name.items())
        },
        server=server,
    )
    if server and server.get("requests"):
        report["client_overhead_ms"] = max(0.0, total.latency.mean - server["request_ms"])
    cores = _generator_cores(windows, generator_cpu_s)
    if generator_cpu_s is not None and chosen:
        spent = max(generator_cpu_s[last] - generator_cpu_s[first], 0.0)
        good = total.requests - total.failures
        report["load_generator"] = {
            "cpu_s": spent,
            "cores": spent / total.seconds,
            "cpu_ms_per_request": spent * 1000 / good if good else None,
        }
        if report["load_generator"]["cores"] >= BUSY_GENERATOR_CORES:
            warnings.append(
                f"the load generator kept {report['load_generator']['cores']:.0%} of a core "
                "busy: it may be what limits the rate; add Locust workers or run it on "
                "another machine"
            )
    if config.open_loop:
        report.update(
            target_rate=config.rate,
            arrival=config.arrival,
            late_share=total.late_share,
            late_threshold_ms=config.late_threshold_ms,
        )
        if total.late_share > LATE_WARNING_SHARE:
            warnings.append(
                f"{total.late_share:.1%} of requests were sent more than "
                f"{config.late_threshold_ms:g} ms "
                "late: the load generator could not keep the rate; add --users or workers"
            )
    report["windows"] = [
        {**row, "server": split}
        for row, split in zip(window_rows(windows, cores), window_splits, strict=True)
    ]
    return report


def _generator_cores(
    windows: Sequence[Window], generator_cpu_s: Sequence[float] | None
) -> list[float] | None:
    """The load generator's CPU in each window, in cores."""
    if generator_cpu_s is None:
        return None
    return [
        max(generator_cpu_s[i + 1] - generator_cpu_s[i], 0.0) / max(w.seconds, 1e-9)
        for i, w in enumerate(windows)
    ]


def window_rows(windows: Sequence[Window], cores: Sequence[float] | None) -> list[dict[str, Any]]:
    """The CSV's rows: each window's figures and, when measured, the load generator's cores."""
    rows = [w.row() for w in windows]
    if cores is not None:
        for row, used in zip(rows, cores, strict=True):
            row["load_generator_cores"] = round(used, 4)
    return rows


def write_report(**kwargs: Any) -> dict[str, Any]:
    """build_report(), then report.json, windows.csv, report.html and, with
    `csv_format=perf_analyzer`, perf_analyzer.csv in config.out."""
    config: LoadTestConfig = kwargs["config"]
    windows: Sequence[Window] = kwargs["windows"]
    report = build_report(**kwargs)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out / "windows.csv", "w", newline="") as handle:
        rows = window_rows(windows, _generator_cores(windows, kwargs.get("generator_cpu_s")))
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["start_s"])
        writer.writeheader()
        writer.writerows(rows)
    if config.csv_format is CsvFormat.PERF_ANALYZER:
        write_perf_analyzer_csv(report, out / "perf_analyzer.csv")
    (out / "report.html").write_text(render_html(report, windows, kwargs["measured"]))
    return report


def perf_analyzer_header(*, open_loop: bool) -> list[str]:
    return ["Request Rate" if open_loop else "Concurrency", *PERF_ANALYZER_COLUMNS]


def perf_analyzer_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """perf_analyzer.csv's rows from a report: one, of the measured windows merged (the
    figures of report.json), as perf_analyzer writes one per concurrency or rate it measured;
    none when nothing was measured. Times are whole microseconds, as perf_analyzer writes
    them. What lifeloop does not measure (the client's send and receive time apart from the
    rest) is an empty cell, not a zero."""
    if "latency_ms" not in report:
        return []
    config = report["config"]
    open_loop = report["mode"] == "open loop"
    latency = report["latency_ms"]
    row = dict.fromkeys(perf_analyzer_header(open_loop=open_loop), "")
    if open_loop:
        row["Request Rate"] = format(config["rate"], "g")
    else:
        row["Concurrency"] = str(config["users"])
    # perf_analyzer counts inferences, so a request of a batch of n counts n.
    row["Inferences/Second"] = format(report["throughput_rps"] * config["batch_size"], "g")
    for p in ("p50", "p90", "p95", "p99"):
        row[f"{p} latency"] = _us(latency[p])
    row["Avg latency"] = _us(latency["mean"])
    server = report.get("server")
    if server and server.get("requests"):
        parts = {
            "Server Queue": server["queue_ms"],
            "Server Compute Input": server["compute_input_ms"],
            "Server Compute Infer": server["compute_infer_ms"],
            "Server Compute Output": server["compute_output_ms"],
        }
        row.update((column, _us(ms)) for column, ms in parts.items())
        # perf_analyzer's remainder: the client's wait less the server's queue and compute.
        # Without a send/receive split it also holds the client's send and receive time.
        row["Network+Server Send/Recv"] = _us(max(0.0, latency["mean"] - sum(parts.values())))
    return [row]


def write_perf_analyzer_csv(report: dict[str, Any], path: Path) -> None:
    """perf_analyzer.csv: its header and rows, each line ended by a bare newline, as
    perf_analyzer ends them."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(
            handle,
            fieldnames=perf_analyzer_header(open_loop=report["mode"] == "open loop"),
            lineterminator="\n",
        )
        writer.writeheader()
        writer.writerows(perf_analyzer_rows(report))


def _us(ms: float) -> str:
    return str(round(ms * 1000))


def render_html(
    report: dict[str, Any], windows: Sequence[Window], measured: tuple[int, int]
) -> str:
    config = report["config"]
    title = f"lifeloop load test: {config['model']} over {config['protocol']}"
    figures = "".join(
        f'<figure class="plot" id="{name}">{svg}'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, svg, caption in _plots(report, windows, measured)
    )
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
        for k, v in summary_rows(report)
    )
    warnings = "".join(f'<p class="warning">{html.escape(w)}</p>' for w in report["warnings"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ padding: .25rem .75rem; text-align: left; }}
th {{ color: #555; font-weight: 500; }} tr:nth-child(even) {{ background: #f4f4f4; }}
.warning {{ background: #fff3cd; padding: .5rem 1rem; border-left: 4px solid #e0a800; }}
.plot svg {{ width: 100%; height: auto; }} figure {{ margin: 1.5rem 0; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{warnings}
<table>{rows}</table>
{figures}
</body></html>
"""


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("mode", report["mode"]),
        ("stable (perf_analyzer rule)", "yes" if report["stable"] else "no"),
        (
            "windows measured / total",
            f"{report['windows_measured']} / {report['windows_total']} "
            f"of {report['window_s']:.2f} s",
        ),
        ("throughput", f"{report['throughput_rps']:.1f} requests/s"),
        ("requests / failures", f"{report['requests']} / {report['failures']}"),
    ]
    if "latency_ms" in report:
        lat = report["latency_ms"]
        rows.append(
            (
                "latency p50 / p90 / p95 / p99",
                " / ".join(f"{lat[k]:.2f}" for k in ("p50", "p90", "p95", "p99")) + " ms",
            )
        )
    for cause, count in report.get("failures_by_cause", {}).items():
        rows.append((f"failed: {cause}", str(count)))
    server = report.get("server")
    if server and server.get("requests"):
        rows.append(
            (
                "server per request (queue / input / infer / output)",
                " / ".join(
                    f"{server[k]:.3f}"
                    for k in (
                        "queue_ms",
                        "compute_input_ms",
                        "compute_infer_ms",
                        "compute_output_ms",
                    )
                )
                + " ms",
            )
        )
        rows.append(("average batch formed", f"{server['average_batch']:.2f}"))
    generator = report.get("load_generator")
    if generator:
        per_request = generator["cpu_ms_per_request"]
        rows.append(
            (
                "load generator CPU",
                f"{generator['cores']:.0%} of a core"
                + (f", {per_request:.3f} ms per request" if per_request is not None else ""),
            )
        )
    if "late_share" in report:
        rows.append(
            (
                "sent late",
                f"{report['late_share']:.2%} (>{report['late_threshold_ms']:g} ms behind schedule)",
            )
        )
    for name, figures in report.get("per_name", {}).items():
        rows.append(
            (
                name,
                f"{figures['requests']} requests, {figures['throughput_rps']:.1f}/s, "
                f"p99 {figures['p99']:.2f} ms",
            )
        )
    return rows


def _plots(
    report: dict[str, Any], windows: Sequence[Window], measured: tuple[int, int]
) -> list[tuple[str, str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not windows:
        return []
    t0 = windows[0].start_s
    mids = [((w.start_s + w.end_s) / 2) - t0 for w in windows]
    span = (
        (windows[measured[0]].start_s - t0, windows[measured[1] - 1].end_s - t0)
        if measured[1] > measured[0]
        else None
    )
    plots = []

    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(mids, [w.throughput for w in windows], marker="o", color="#1f77b4")
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests/s")
    ax.set_ylim(bottom=0)
    _shade(ax, span)
    plots.append(
        (
            "throughput",
            svg_text(fig, plt),
            "Throughput per window (shaded: the windows merged into the figures)",
        )
    )

    fig, ax = plt.subplots(figsize=(9, 3.2))
    for key, color in (
        ("p50", "#2ca02c"),
        ("p90", "#ff7f0e"),
        ("p95", "#d62728"),
        ("p99", "#9467bd"),
    ):
        ax.plot(
            mids, [getattr(w.latency, key) for w in windows], marker="o", label=key, color=color
        )
    ax.set_xlabel("seconds")
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(bottom=0)
    ax.legend()
    _shade(ax, span)
    plots.append(("latency", svg_text(fig, plt), "Latency percentiles per window"))

    server = report.get("server")
    if server and server.get("requests") and "latency_ms" in report:
        parts = {
            "queue": server["queue_ms"],
            "compute input": server["compute_input_ms"],
            "compute infer": server["compute_infer_ms"],
            "compute output": server["compute_output_ms"],
            "client + network": report.get("client_overhead_ms", 0.0),
        }
        fig, ax = plt.subplots(figsize=(9, 2.4))
        left = 0.0
        colors = ("#8c564b", "#e377c2", "#1f77b4", "#17becf", "#bcbd22")
        for (label, value), color in zip(parts.items(), colors, strict=True):
            ax.barh(
                ["mean request"], [value], left=left, label=f"{label} {value:.2f} ms", color=color
            )
            left += value
        ax.set_xlabel("milliseconds")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.5), ncol=3)
        fig.tight_layout()
        plots.append(
            (
                "split",
                svg_text(fig, plt),
                "Where a request's time goes: server-side (Triton counters) vs client side",
            )
        )
    return plots


def _shade(ax: Any, span: tuple[float, float] | None) -> None:
    if span:
        ax.axvspan(*span, color="#1f77b4", alpha=0.08)
    ax.grid(alpha=0.3)


def svg_text(fig: Any, plt: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]
