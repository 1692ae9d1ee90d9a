"""`make chaos`: fault injection against real local clusters, with a verdict per scenario.

    .venv/bin/python tests/chaos/run.py [--only kill-worker,sse-resume] [--sessions 200]
        [--concurrency 32] [--tool count|add] [--keep]

Each scenario (scenarios.py) starts its own cluster from target/release (nats-server, the
development auth-service, workers, gateways; loopback only) in its own temporary directory,
drives `count` calls on --sessions sessions, --concurrency at a time, before, during and after
one fault, and tears everything down. At the end a table is printed and written to
tests/chaos/results.md:

    scenario | calls | failed | duplicated | events lost | longest stall (s) | verdict

- failed: calls without a successful answer (what counts as one is in each scenario's notes);
- duplicated: answers that repeat or skip a session's counter value beyond what its uncertain
  calls (failed in a way that may have run) explain, plus SSE events delivered twice;
- events lost: `count` values never seen on the session's GET /mcp stream (sse-resume only);
- longest stall: the longest any single call took, or any session went without a successful
  answer.

Exit status 1 when a scenario FAILs (failed > 0 where it promises none, duplicated > 0, events
lost > 0, sessions that never answered again) or ERRORs (the harness could not run it); a
SKIP does not fail the run. The logs of a scenario that did not pass are kept (the path is
printed); --keep keeps every scenario's. --tool add drives `add` instead (no ledger, no events):
only to try the harness on binaries without `count`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))
sys.path.insert(0, str(HERE))

from harness import RELEASE_DIR  # noqa: E402
from scenarios import SCENARIOS, Ctx, Result  # noqa: E402

RESULTS = HERE / "results.md"
COLUMNS = ["scenario", "calls", "failed", "duplicated", "events lost", "longest stall (s)", "verdict"]


def log(line: str) -> None:
    print(line, flush=True)


def cells(r: Result) -> list[str]:
    def n(v: int | None) -> str:
        return "–" if v is None else str(v)

    failed = f"{r.failed}" + ("" if r.zero_failed or r.verdict == "SKIP" else " (allowed)")
    if r.verdict in ("SKIP", "ERROR") and r.calls == 0:
        return [r.name, "–", "–", "–", "–", "–", r.verdict]
    return [r.name, str(r.calls), failed, n(r.duplicated), n(r.events_lost), f"{r.stall:.2f}", r.verdict]


def text_table(results: list[Result]) -> str:
    rows = [COLUMNS] + [cells(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for k, row in enumerate(rows):
        lines.append(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(results: list[Result], args: argparse.Namespace, seconds: float) -> str:
    binaries = ", ".join(
        f"{b} {datetime.fromtimestamp((RELEASE_DIR / b).stat().st_mtime, timezone.utc):%Y-%m-%d %H:%M}Z"
        for b in ("gateway", "session-worker", "auth-service") if (RELEASE_DIR / b).exists()
    )
    out = [
        "# make chaos",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}, {seconds:.0f} s; tool `{args.tool}`, "
        f"{args.sessions} sessions, concurrency {args.concurrency}; binaries: {binaries}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "| --- | " + " | ".join("---:" for _ in COLUMNS[1:-1]) + " | --- |",
    ]
    out += ["| " + " | ".join(cells(r)) + " |" for r in results]
    out += ["", "## Notes", ""]
    for r in results:
        out.append(f"**{r.name}** ({r.verdict})")
        out.append("")
        out += [f"- {p}" for p in r.problems] + [f"- {n}" for n in r.notes]
        out.append("")
    return "\n".join(out)


def run_one(name: str, fn, args: argparse.Namespace) -> Result:  # type: ignore[no-untyped-def]
    workdir = Path(tempfile.mkdtemp(prefix=f"mcp-chaos-{name}-"))
    log(f"== {name} ({workdir})")
    t = time.monotonic()
    with ExitStack() as stack:
        ctx = Ctx(workdir, stack, tool=args.tool, sessions=args.sessions, concurrency=args.concurrency, log=log)
        try:
            res = fn(ctx)
            res.judge()
        except Exception as exc:  # noqa: BLE001 - reported as the scenario's ERROR
            res = Result(name, zero_failed=True, verdict="ERROR", duplicated=None)
            res.problems.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
            log(traceback.format_exc(limit=6))
    log(f"   {res.verdict} in {time.monotonic() - t:.0f}s" + "".join(f"\n   - {p}" for p in res.problems))
    if res.verdict in ("PASS", "SKIP") and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"   logs kept in {workdir}/logs")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [n for n, _ in SCENARIOS]
    ap.add_argument("--only", default="", help=f"comma-separated scenarios ({', '.join(names)})")
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--tool", choices=["count", "add"], default="count")
    ap.add_argument("--keep", action="store_true", help="keep every scenario's directory and logs")
    args = ap.parse_args()
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        ap.error(f"unknown scenario {', '.join(unknown)}; known: {', '.join(names)}")

    t = time.monotonic()
    results = [run_one(n, fn, args) for n, fn in SCENARIOS if not wanted or n in wanted]
    seconds = time.monotonic() - t
    log("")
    log(text_table(results))
    RESULTS.write_text(markdown(results, args, seconds) + "\n")
    log(f"\n{len(results)} scenarios in {seconds:.0f}s; table and notes in {RESULTS.relative_to(HERE.parents[1])}")
    return 1 if any(r.verdict in ("FAIL", "ERROR") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
