"""Plots of the fleet benchmarks' reports (matplotlib, from the test venv).

    python bench/plot.py burst REPORT.json OUT.png   latency and outcomes over time around a burst
    python bench/plot.py rss REPORT.json OUT.png     RSS of every process over a soak

REPORT.json: what `target/release/burst --out` writes, or bench/fleet.sh's soak report.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def burst(report: dict, out: str) -> None:
    tl = report["timeline"]
    width = report["bucket_s"]
    t = [b["start_s"] for b in tl]
    fig, (lat, rate, mem) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    start, end = report["before_s"], report["before_s"] + report["burst_s"]
    for ax in (lat, rate, mem):
        ax.axvspan(start, end, color="orange", alpha=0.15, label="burst")
        ax.grid(True, alpha=0.3)
    lat.plot(t, [b["p50_ms"] for b in tl], label="p50 (answered calls)")
    lat.plot(t, [b["p99_ms"] for b in tl], label="p99 (answered calls)")
    lat.plot(t, [b["max_ms"] for b in tl], label="max", alpha=0.4)
    lat.set_yscale("log")
    lat.set_ylabel("latency, ms")
    lat.legend(loc="upper right")
    lat.set_title(
        f"{report['label'] or 'burst'}: {report['base_rate']:.0f}/s, {report['burst_rate']:.0f}/s for "
        f"{report['burst_s']:.0f} s, then {report['base_rate']:.0f}/s"
    )
    for key, label in [("ok", "answered"), ("shed", "shed (503/429)"), ("error", "error"),
                       ("timeout", "timeout"), ("unsent", "unsent (client full)")]:
        series = [b[key] / width for b in tl]
        if any(series):
            rate.plot(t, series, label=label)
    rate.set_ylabel("calls/s (by arrival)")
    rate.legend(loc="upper right")
    names = sorted({k for b in tl for k in b["rss_kib"]})
    for name in names:
        pts = [(b["start_s"], b["rss_kib"][name] / 1024) for b in tl if name in b["rss_kib"]]
        mem.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
    mem.set_ylabel("RSS, MiB")
    mem.set_xlabel("seconds")
    if names:
        mem.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def rss(report: dict, out: str) -> None:
    samples = report["samples"]
    fig, (mem, calls) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    t = [s["t_s"] / 60 for s in samples]
    for name in sorted({k for s in samples for k in s["rss_kib"]}):
        mem.plot(t, [s["rss_kib"].get(name, float("nan")) / 1024 for s in samples], label=name)
    mem.set_ylabel("RSS, MiB")
    mem.set_title(f"soak: {report['duration_s'] / 60:.0f} min of mixed traffic")
    mem.legend(loc="upper left")
    mem.grid(True, alpha=0.3)
    for key in sorted({k for s in samples for k in s.get("ops", {})}):
        calls.plot(t, [s.get("ops", {}).get(key, 0) for s in samples], label=key)
    calls.set_ylabel("operations/s")
    calls.set_xlabel("minutes")
    calls.legend(loc="upper left")
    calls.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[1] not in ("burst", "rss"):
        sys.exit(__doc__)
    with open(sys.argv[2]) as f:
        report = json.load(f)
    {"burst": burst, "rss": rss}[sys.argv[1]](report, sys.argv[3])
    print(f"written: {sys.argv[3]}")


if __name__ == "__main__":
    main()
