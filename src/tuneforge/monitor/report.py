"""`tuneforge monitor report`: traffic, latency, errors, tokens and feedback from the request log, per model version.

Every figure is computed from the rows `tuneforge serve` logged (monitor/store.py), grouped by
`LoggedRequest.version` (the registry version, else the served model name) and over all of them:

* latency and time-to-first-token percentiles (p50/p90/p99, numpy's linear interpolation) cover
  the requests that were answered (status 200): a failed request's latency is the time it took to
  fail (a 503 timeout is 300 s, a 400 a millisecond) and says nothing about how fast answers come;
* the error rate is the share of requests whose status is not 200, broken down by status;
* token totals and means are over answered requests;
* the feedback rate is the share of answered requests that got any feedback, and approval is the
  share of rated requests whose latest rating is +1 (a user who changes their mind counts once).

Time buckets are hours when the window spans at most two days, else days, in UTC (the log stores
unix time; UTC keeps a report the same wherever it is run).  The HTML page reuses the comparison
report's helpers (evaluate/report.py): its PNGs are drawn into a temporary folder beside DIR and
moved in, index.html last, so a page is never seen half written.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from tuneforge.monitor.store import Feedback, LoggedRequest

ALL = "(all)"
HOUR, DAY = 3600, 86400
MAX_HOURLY_SPAN_S = 2 * DAY
SHOWN_BUCKETS = 48  # the terminal's traffic table shows the latest ones; the page and report.json hold all
PERCENTILES = (50, 90, 99)


@dataclass
class Summary:
    """The figures of one model version, or of all of them (name ALL)."""

    name: str
    requests: int = 0
    answered: int = 0  # status 200
    errors: dict[str, int] = field(default_factory=dict)  # status -> count, for every status but 200
    latency_s: dict[str, float] = field(default_factory=dict)  # p50/p90/p99 of answered requests
    ttft_s: dict[str, float] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    mean_prompt_tokens: float = math.nan
    mean_completion_tokens: float = math.nan
    rated: int = 0  # answered requests with any feedback
    approved: int = 0  # ... whose latest rating is +1
    corrected: int = 0  # ... whose latest feedback carries a correction

    @property
    def error_rate(self) -> float:
        return (self.requests - self.answered) / self.requests if self.requests else math.nan

    @property
    def feedback_rate(self) -> float:
        return self.rated / self.answered if self.answered else math.nan

    @property
    def approval(self) -> float:
        return self.approved / self.rated if self.rated else math.nan

    def as_dict(self) -> dict:
        return {**asdict(self), "error_rate": self.error_rate, "feedback_rate": self.feedback_rate,
                "approval": self.approval}


@dataclass
class Timeline:
    """Per time bucket: requests per version, errors, and latency percentiles over all versions."""

    bucket: str  # "hour" or "day"
    starts: list[float]  # unix time of each bucket's start
    requests: dict[str, list[int]]  # version -> count per bucket
    errors: list[int]
    latency_s: dict[str, list[float]]  # p50/p90/p99 -> per bucket (NaN where nothing was answered)

    def labels(self) -> list[str]:
        pattern = "%Y-%m-%d %H:00" if self.bucket == "hour" else "%Y-%m-%d"
        return [datetime.fromtimestamp(start, timezone.utc).strftime(pattern) for start in self.starts]


@dataclass
class MonitorReport:
    since: float | None
    until: float | None
    first: float | None  # first and last logged request in the window
    last: float | None
    overall: Summary
    versions: list[Summary]
    timeline: Timeline | None

    def as_dict(self) -> dict:
        timeline = None
        if self.timeline:
            timeline = {**asdict(self.timeline), "labels": self.timeline.labels()}
        return {"since": self.since, "until": self.until, "first": self.first, "last": self.last,
                "overall": self.overall.as_dict(), "versions": [v.as_dict() for v in self.versions],
                "timeline": timeline}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {f"p{p}": math.nan for p in PERCENTILES}
    found = np.percentile(np.asarray(values, dtype=float), PERCENTILES)
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, found)}


def summarize(name: str, requests: list[LoggedRequest], feedback: dict[str, list[Feedback]]) -> Summary:
    answered = [r for r in requests if r.ok]
    summary = Summary(name, requests=len(requests), answered=len(answered))
    summary.errors = {str(status): n for status, n in sorted(Counter(r.status for r in requests if not r.ok).items())}
    summary.latency_s = percentiles([r.latency_s for r in answered if r.latency_s is not None])
    summary.ttft_s = percentiles([r.ttft_s for r in answered if r.ttft_s is not None])
    prompt = [r.prompt_tokens for r in answered if r.prompt_tokens is not None]
    completion = [r.completion_tokens for r in answered if r.completion_tokens is not None]
    summary.prompt_tokens, summary.completion_tokens = sum(prompt), sum(completion)
    summary.mean_prompt_tokens = float(np.mean(prompt)) if prompt else math.nan
    summary.mean_completion_tokens = float(np.mean(completion)) if completion else math.nan
    for request in answered:
        ratings = feedback.get(request.id)
        if ratings:
            summary.rated += 1
            summary.approved += ratings[-1].rating == 1
            summary.corrected += bool((ratings[-1].correction or "").strip())
    return summary


def bucket_size(first: float, last: float) -> int:
    return HOUR if last - first <= MAX_HOURLY_SPAN_S else DAY


def timeline(requests: list[LoggedRequest], versions: list[str]) -> Timeline:
    first, last = requests[0].created, requests[-1].created
    size = bucket_size(first, last)
    start = math.floor(first / size) * size
    count = int((last - start) // size) + 1
    starts = [start + i * size for i in range(count)]
    per_version = {version: [0] * count for version in versions}
    errors = [0] * count
    latencies: list[list[float]] = [[] for _ in range(count)]
    for request in requests:
        index = int((request.created - start) // size)
        per_version[request.version][index] += 1
        if not request.ok:
            errors[index] += 1
        elif request.latency_s is not None:
            latencies[index].append(request.latency_s)
    found = [percentiles(values) for values in latencies]
    latency = {f"p{p}": [bucket[f"p{p}"] for bucket in found] for p in PERCENTILES}
    return Timeline("hour" if size == HOUR else "day", starts, per_version, errors, latency)


def build_report(requests: list[LoggedRequest], feedback: dict[str, list[Feedback]],
                 since: float | None = None, until: float | None = None) -> MonitorReport:
    """The report over `requests` (in arrival order, as store.read_requests returns them)."""
    versions = list(dict.fromkeys(r.version for r in requests))
    by_version = {version: [r for r in requests if r.version == version] for version in versions}
    return MonitorReport(
        since=since, until=until,
        first=requests[0].created if requests else None, last=requests[-1].created if requests else None,
        overall=summarize(ALL, requests, feedback),
        versions=[summarize(version, by_version[version], feedback) for version in versions],
        timeline=timeline(requests, versions) if requests else None,
    )


# ---------------------------------------------------------------------------------------------
# Terminal


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def seconds(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def mean(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def rows(summaries: list[Summary]) -> dict[str, list[str]]:
    """Every figure as text, one list entry per summary: the terminal table and the page share it."""
    return {
        "requests": [f"{s.requests:,}" for s in summaries],
        "errors": [f"{s.requests - s.answered:,} ({share(s.error_rate)})" for s in summaries],
        "errors by status": [", ".join(f"{k}: {n:,}" for k, n in s.errors.items()) or "-" for s in summaries],
        **{f"latency {p}": [seconds(s.latency_s[p]) for s in summaries] for p in ("p50", "p90", "p99")},
        **{f"time to first token {p}": [seconds(s.ttft_s[p]) for s in summaries] for p in ("p50", "p90", "p99")},
        "prompt tokens (total, mean)": [f"{s.prompt_tokens:,}, {mean(s.mean_prompt_tokens)}" for s in summaries],
        "completion tokens (total, mean)": [f"{s.completion_tokens:,}, {mean(s.mean_completion_tokens)}"
                                            for s in summaries],
        "feedback rate": [f"{share(s.feedback_rate)} ({s.rated:,})" for s in summaries],
        "approval (+1)": [f"{share(s.approval)} ({s.approved:,} of {s.rated:,})" for s in summaries],
        "corrections": [f"{s.corrected:,}" for s in summaries],
    }


def shown(report: MonitorReport) -> list[Summary]:
    """The columns: every version, then all of them together when there is more than one."""
    return report.versions + ([report.overall] if len(report.versions) > 1 else [])


def print_report(console: Console, report: MonitorReport) -> None:
    console.print(f"requests logged {when(report.first)} to {when(report.last)}", highlight=False)
    summaries = shown(report)
    table = Table(title="Requests by model version", title_justify="left")
    table.add_column("")
    for summary in summaries:
        table.add_column(summary.name, justify="right")
    for name, values in rows(summaries).items():
        table.add_row(name, *values)
    console.print(table)
    line = report.timeline
    if line is None:
        return
    traffic = Table(title=f"Requests per {line.bucket} (UTC)", title_justify="left")
    traffic.add_column(line.bucket)
    for version in line.requests:
        traffic.add_column(version, justify="right")
    traffic.add_column("errors", justify="right")
    traffic.add_column("latency p50", justify="right")
    start = max(0, len(line.starts) - SHOWN_BUCKETS)
    for index, label in enumerate(line.labels()[start:], start=start):
        traffic.add_row(label, *(str(counts[index]) for counts in line.requests.values()),
                        str(line.errors[index]), seconds(line.latency_s["p50"][index]))
    console.print(traffic)
    if start:
        console.print(f"  ({start} earlier {line.bucket}s in report.json and the HTML report)")


# ---------------------------------------------------------------------------------------------
# HTML


def traffic_chart(path: Path, line: Timeline) -> str:
    from tuneforge.evaluate.report import COLOURS, pyplot, save

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(line.starts))
    bottom = np.zeros(len(x))
    for index, (version, counts) in enumerate(line.requests.items()):
        axis.bar(x, counts, bottom=bottom, label=version, color=COLOURS[index % len(COLOURS)])
        bottom += np.asarray(counts)
    time_axis(axis, line)
    axis.set_ylabel("requests")
    axis.set_title(f"requests per {line.bucket}")
    axis.legend(fontsize=8)
    return save(figure, path)


def latency_chart(path: Path, line: Timeline) -> str:
    from tuneforge.evaluate.report import COLOURS, pyplot, save

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 3.5))
    for index, (name, values) in enumerate(line.latency_s.items()):
        axis.plot(range(len(values)), values, "o-", markersize=3, label=name, color=COLOURS[index])
    time_axis(axis, line)
    axis.set_ylabel("seconds")
    axis.set_title(f"latency of answered requests per {line.bucket}")
    axis.legend(fontsize=8)
    return save(figure, path)


def errors_chart(path: Path, line: Timeline) -> str:
    from tuneforge.evaluate.report import pyplot, save

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 3.5))
    totals = np.sum([counts for counts in line.requests.values()], axis=0)
    rate = np.divide(line.errors, totals, out=np.full(len(totals), np.nan), where=totals > 0)
    axis.bar(range(len(rate)), np.nan_to_num(rate), color="#c00000")
    time_axis(axis, line)
    axis.set_ylim(0, max(0.05, float(np.nanmax(rate)) * 1.15 if np.any(totals > 0) else 0.05))
    axis.set_ylabel("share of requests")
    axis.set_title(f"error rate per {line.bucket}")
    return save(figure, path)


def time_axis(axis, line: Timeline) -> None:
    labels = line.labels()
    step = max(1, math.ceil(len(labels) / 12))
    axis.set_xticks(range(0, len(labels), step), labels[::step], rotation=30, ha="right", fontsize=7)
    axis.set_xlabel(f"{line.bucket} (UTC)")
    axis.grid(axis="y", alpha=0.3)


CHARTS = (("traffic.png", traffic_chart, "requests over time"), ("latency.png", latency_chart, "latency over time"),
          ("errors.png", errors_chart, "error rate over time"))


def page(report: MonitorReport) -> str:
    from tuneforge.evaluate.report import STYLE, image

    summaries = shown(report)
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(s.name)}</th>" for s in summaries) + "</tr>"
    body_rows = "".join(
        f"<tr><th>{html.escape(name)}</th>" + "".join(f'<td class="num">{html.escape(v)}</td>' for v in values) + "</tr>"
        for name, values in rows(summaries).items())
    body = [f"<h1>tuneforge monitoring report</h1><p>Requests logged {when(report.first)} to {when(report.last)}"
            f" ({report.overall.requests:,} in all). Latency and tokens count answered requests (status 200); "
            "approval is the share of rated requests whose latest rating is +1.</p>",
            f"<h2>By model version</h2><table>{head}{body_rows}</table>"]
    if report.timeline is None:
        body.append('<p class="note">No requests were logged in this window.</p>')
    else:
        body.append("<h2>Over time</h2>" + "".join(image(name, alt) for name, _, alt in CHARTS))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>tuneforge monitoring report</title>"
            f"<style>{STYLE}</style></head><body>" + "".join(body) + "</body></html>")


def finite(value):
    """A JSON-ready copy with NaN (a figure with nothing to measure) as null, which every JSON reader accepts."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


def write_html(directory: Path, report: MonitorReport) -> Path:
    """DIR/index.html, DIR/report.json and the charts; drawn in a temporary folder beside DIR, then moved in."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        names = []
        if report.timeline is not None:
            names = [draw(staging / name, report.timeline) for name, draw, _ in CHARTS]
        (staging / "report.json").write_text(json.dumps(finite(report.as_dict()), indent=2, allow_nan=False) + "\n")
        (staging / "index.html").write_text(page(report), encoding="utf-8")
        for name in [*names, "report.json", "index.html"]:  # the page last: it names the others
            os.replace(staging / name, directory / name)
        if report.timeline is None:  # charts of an earlier report must not sit beside a page without them
            for name, _, _ in CHARTS:
                (directory / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory / "index.html"
