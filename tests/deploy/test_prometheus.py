"""The alert rules (deploy/prometheus/rules.yaml) and the Grafana dashboard
(deploy/grafana/mcp-cluster.json) against the real Prometheus tools.

- `promtool check rules` and `promtool test rules` (deploy/prometheus/rules.test.yaml), and every
  alert has a unit test in which it fires and one in which it stays quiet;
- a real Prometheus (Debian's `prometheus`, installed by scripts/install-deps.sh) scrapes a real
  local cluster (nats-server, the auth-service as OAuth server with static users, two workers, a
  gateway) while a client signs in, refreshes its token and calls tools. Every rule evaluates
  without error, every metric the rules read exists, and on the healthy cluster no rule's
  condition holds; then a rotated refresh token is used again and AuthRefreshTokenReuse fires.
  Every dashboard panel's query runs without error, and each one over metrics this traffic
  produces returns data.

Contract: issue "Deploy and watch it" (alert rules, dashboard); runbook: deploy/README.md "Alerts".
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from harness import STATIC_PASSWORDS, Cluster, Proc, free_port, wait_http_ok  # noqa: E402
from mcp_http import SESSIONFUL_VERSION, SseReader, headers, open_session, response_for, rpc  # noqa: E402
from oauth_client import OAuthClient  # noqa: E402

RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "rules.yaml"
RULE_TESTS = RULES_DIR / "rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "mcp-cluster.json"
ARTIFACTS = ROOT / "tests" / "deploy" / "artifacts"  # the panels as PNGs, for a person to look at
# Metrics the rules read, each produced by the traffic below (or present from start-up).
RULE_METRICS = [
    "mcp_gateway_requests_total",
    "mcp_gateway_request_duration_seconds_bucket",
    "mcp_gateway_request_duration_seconds_count",
    "mcp_gateway_auth_failures_total",
    "mcp_worker_owned_shards",
    "mcp_nats_connected",
    "mcp_nats_disconnects_total",
    "auth_refresh_reuse_total",
    "mcp_gateway_requests_shed_total",
]
# Metrics the traffic of this test cannot produce (no worker dies, no upstream IdP with refresh
# tokens or code exchange: the static-users provider signs in locally). Panels over them are only
# checked to run.
NOT_PRODUCED = {
    "mcp_gateway_worker_gone_total",
    "auth_upstream_request_duration_seconds_bucket",
    "auth_vault_refreshes_total",
}
WAIT = 60.0  # seconds for Prometheus to scrape and evaluate what a check needs
RATE_INTERVAL = "15s"  # Grafana's $__rate_interval for a 1 s scrape interval


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: run `bash scripts/install-deps.sh` (Debian package prometheus)"
    return path


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)\s*$", RULES.read_text(), flags=re.M)


def test_promtool_checks_the_rules() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in out.stdout, out.stdout


def test_promtool_unit_tests_pass() -> None:
    out = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                         timeout=120, cwd=RULES_DIR)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test_in_which_it_fires() -> None:
    tests = RULE_TESTS.read_text()
    names = alert_names()
    assert len(names) >= 8, names
    for name in names:
        fired = re.search(rf"alertname: {name}\n\s+exp_alerts:\n\s+- exp_labels:", tests)
        assert fired, f"no unit test in {RULE_TESTS.name} where {name} fires"
        quiet = re.search(rf"alertname: {name}\n\s+exp_alerts: \[\]", tests)
        assert quiet, f"no unit test in {RULE_TESTS.name} where {name} stays quiet"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # No refresh grace: a rotated refresh token used again is a reuse at once.
    c = Cluster(tmp_path_factory.mktemp("cluster"), workers=2, oauth="static", auth_env={"AUTH_REFRESH_GRACE": "0"})
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping every process of `cluster` each second; yields its URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: run `bash scripts/install-deps.sh` (Debian package prometheus)"
    work = tmp_path_factory.mktemp("prometheus")
    shutil.copy(RULES, work / "rules.yaml")

    def job(name: str, urls: list[str]) -> str:
        targets = ", ".join(f"'{u.removeprefix('http://')}'" for u in urls)
        return f"  - job_name: {name}\n    static_configs:\n      - targets: [{targets}]\n"

    assert cluster.auth is not None
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "rule_files:\n  - rules.yaml\n"
        "scrape_configs:\n"
        + job("gateway", [g.admin_url for g in cluster.gateways])
        + job("session-worker", [w.admin_url for w in cluster.workers])
        + job("auth-service", [cluster.auth.admin_url])
    )
    port = free_port()
    proc = Proc("prometheus", [
        binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ], env={"PATH": "/usr/bin:/bin", "HOME": str(work)}, log_path=work / "prometheus.log")
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(proc, f"{url}/-/ready")
        yield url
    finally:
        proc.stop()


def query(prom: str, expr: str) -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, r.status_code, body)
    return body["data"]["result"]


def wait_for(what: str, check, timeout: float = WAIT):  # noqa: ANN001, ANN201 - a predicate, its value
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"not within {timeout:.0f} s: {what}"
            return value
        time.sleep(0.5)


def drive_traffic(cluster: Cluster, client: OAuthClient) -> str:
    """Sign in, refresh, calls, an SSE stream, a refused token: what the rules and panels count.
    Returns the refresh token that was rotated out (for the reuse at the end)."""
    resource = cluster.gateway.resource
    tokens = client.login(resource, username="alice", password=STATIC_PASSWORDS["alice"])
    r = client.refresh(tokens["refresh_token"], resource)
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    url = cluster.gateway.mcp_url
    with httpx.Client(timeout=30) as http:
        session = open_session(http, url, token)
        for i in range(20):
            r = http.post(url, json=rpc("tools/call", {"name": "add", "arguments": {"a": i, "b": 1}}, 10 + i),
                          headers=headers(token, session=session, version=SESSIONFUL_VERSION))
            assert r.status_code == 200 and "result" in response_for(r, 10 + i), r.text
        r = http.post(url, json=rpc("tools/list", {}, 99), headers=headers("not-a-token", session=session))
        assert r.status_code == 401, r.text
        with SseReader(url, token, headers={"Mcp-Session-Id": session, "MCP-Protocol-Version": SESSIONFUL_VERSION}) as s:
            assert s.status == 200
    return tokens["refresh_token"]


def metrics_of(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:mcp|auth)_[a-z_]+)", expr))


def render_panels(prom: str, start: float, end: float) -> list[Path]:
    """Each dashboard panel's series over [start, end], drawn with matplotlib into ARTIFACTS (a
    stand-in for a Grafana screenshot: no Grafana runs here). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    written = []
    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p.get("targets")]
    for n, panel in enumerate(panels, 1):
        fig, ax = plt.subplots(figsize=(8, 3.2), dpi=80)
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            r = httpx.get(f"{prom}/api/v1/query_range",
                          params={"query": expr, "start": start, "end": end, "step": "1s"}, timeout=10).json()
            assert r["status"] == "success", (panel["title"], expr, r)
            for series in r["data"]["result"]:
                legend = re.sub(r"\{\{(\w+)\}\}", lambda m, s=series: s["metric"].get(m.group(1), ""),
                                target.get("legendFormat", ""))
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, label=legend or expr[:40])
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("seconds", fontsize=8)
        ax.set_ylabel(panel["fieldConfig"]["defaults"].get("unit", ""), fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        path = ARTIFACTS / f"{n:02d}-{re.sub(r'[^a-z0-9]+', '-', panel['title'].lower()).strip('-')}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def dashboard_targets() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"].replace("$__rate_interval", RATE_INTERVAL)))
    return out


def test_prometheus_evaluates_the_rules_and_the_dashboard_on_a_live_cluster(
    cluster: Cluster, prometheus: str,
) -> None:
    started = time.time()
    client = OAuthClient.register(cluster.issuer)
    rotated = drive_traffic(cluster, client)

    # Every metric the rules read is scraped from the cluster.
    for metric in RULE_METRICS:
        wait_for(f"{metric} scraped", lambda m=metric: query(prometheus, f"count({m})"))
    # Every process reports its NATS connection, up.
    connected = query(prometheus, "mcp_nats_connected")
    assert {s["metric"]["job"] for s in connected} == {"gateway", "session-worker", "auth-service"}, connected
    assert all(s["value"][1] == "1" for s in connected), connected
    # Both workers' shares, once each worker has been scraped since the shards settled (a
    # scrape of one worker before the other's first one reads 512).
    wait_for(
        "every shard owned by a worker, in Prometheus",
        lambda: [s["value"][1] for s in query(prometheus, "sum(mcp_worker_owned_shards)")] == ["1024"],
    )

    # Prometheus loaded every rule and evaluated each without error.
    names = set(alert_names())

    def evaluated() -> list[dict] | None:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        done = {r["name"] for r in rules if r["health"] != "unknown"}
        return rules if done >= names else None

    rules = wait_for("every rule evaluated", evaluated)
    assert {r["name"] for r in rules} == names
    for rule in rules:
        assert rule["health"] == "ok" and not rule.get("lastError"), rule
        # Its expression as a query: valid PromQL, and on this healthy cluster its condition is
        # false (an empty result), once shards settled between the two workers.
        wait_for(f"{rule['name']} quiet on a healthy cluster", lambda r=rule: query(prometheus, r["query"]) == [],
                 timeout=30)

    # Every dashboard panel's query runs; those over metrics this traffic produced return data.
    targets = dashboard_targets()
    assert len(targets) >= 20, targets
    for title, expr in targets:
        used = metrics_of(expr)
        assert used, (title, expr)
        if used & NOT_PRODUCED:
            query(prometheus, expr)
            continue
        wait_for(f"data for panel {title!r}: {expr}", lambda e=expr: query(prometheus, e))

    # A rotated refresh token used again: the grant is revoked and the alert fires.
    r = client.refresh(rotated, cluster.gateway.resource)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text

    def firing() -> list[dict]:
        alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "AuthRefreshTokenReuse" and a["state"] == "firing"]

    wait_for("AuthRefreshTokenReuse firing", firing)

    # The panels drawn over the whole test, for a person to look at.
    pngs = render_panels(prometheus, started - 5, time.time())
    assert len(pngs) == len([p for p in json.loads(DASHBOARD.read_text())["panels"] if p.get("targets")])
    assert all(p.stat().st_size > 5000 for p in pngs), pngs
