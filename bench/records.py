"""The cost of request records on the hot path: tools/call throughput with WORKER_REQUEST_RECORDS
on and off, measured in one run.

    .venv/bin/python bench/records.py [--concurrency 1 16] [--duration 10] [--rounds 2]

Two clusters (each: its own nats-server, auth-service, one session-worker, a gateway) run the
conformance tool profile, where every `tools/call` is recorded (in the default profile `add` is
annotated read-only and idempotent, so it never is); they differ only in
WORKER_REQUEST_RECORDS. target/release/loadgen drives `add` on each in turn, alternating, for
--rounds rounds, so noise from a shared machine falls on both alike. Prints a table with the
ratio on/off per concurrency (median of the rounds) and writes
bench/results/records-<UTC timestamp>.json. Needs `cargo build --release --workspace` and
`bash scripts/install-deps.sh`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from harness import RELEASE_DIR, Cluster  # noqa: E402


def run(url: str, token: str, concurrency: int, duration: int, label: str) -> dict:
    out = subprocess.run(
        [str(RELEASE_DIR / "loadgen"), "--url", url, "--concurrency", str(concurrency), "--duration",
         str(duration), "--warmup", "2", "--label", label],
        env={"BENCH_TOKEN": token, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=duration + 120, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    lines: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-records-") as tmp:
        clusters = {
            mode: Cluster(Path(tmp) / mode, workers=1, profile="conformance",
                          worker_env={"WORKER_REQUEST_RECORDS": "true" if mode == "on" else "false"})
            for mode in ("on", "off")
        }
        try:
            for c in clusters.values():
                (c.workdir).mkdir(parents=True, exist_ok=True)
                c.start()
            for rnd in range(args.rounds):
                for conc in args.concurrency:
                    for mode, c in clusters.items():
                        assert c.gateway is not None
                        line = run(c.gateway.mcp_url, c.mint("bench"), conc, args.duration, f"records_{mode}")
                        line.update(round=rnd, concurrency=conc, records=mode)
                        lines.append(line)
                        print(json.dumps(line), file=sys.stderr)
        finally:
            for c in clusters.values():
                c.stop()
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    path = ROOT / "bench" / "results" / f"records-{stamp}.json"
    path.write_text(json.dumps({"command": " ".join(["bench/records.py", *sys.argv[1:]]), "runs": lines}, indent=1))

    def rps(line: dict) -> float:
        for key in ("rps", "throughput", "calls_per_sec", "requests_per_sec"):
            if key in line:
                return float(line[key])
        raise KeyError(f"no throughput in {line}")

    print(f"{'concurrency':>11} {'records on':>12} {'records off':>12} {'on/off':>7}")
    for conc in args.concurrency:
        on = statistics.median(rps(x) for x in lines if x["concurrency"] == conc and x["records"] == "on")
        off = statistics.median(rps(x) for x in lines if x["concurrency"] == conc and x["records"] == "off")
        print(f"{conc:>11} {on:>12.0f} {off:>12.0f} {on / off:>7.2f}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
