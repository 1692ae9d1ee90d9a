"""Fixtures: one real cluster per test session (nats-server, dev issuer, two workers, a gateway),
and, for the OAuth tests, clusters whose auth-service is the OAuth server behind the gateway
(`oauth_cluster`: static-users upstream; `oidc_cluster`: the npm oidc-provider fixture upstream),
each started for the module that asks for it.

Binaries come from `target/release` (build with `cargo build --release --workspace`), nats-server
from `.venv` (scripts/install-deps.sh). Logs of every process are under the pytest temp dir and
the tail of each is attached to the report of a failing test.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Cluster  # noqa: E402

# The gateway's body limit in the shared cluster (GATEWAY_MAX_BODY_BYTES).
MAX_BODY_BYTES = 256 * 1024
# The one browser origin the shared cluster's gateway accepts (GATEWAY_ALLOWED_ORIGINS).
TRUSTED_ORIGIN = "https://trusted.example"

# AUTH_REFRESH_GRACE of the OAuth clusters: seconds a rotated refresh token still works.
OAUTH_REFRESH_GRACE = 3

_clusters: list[Cluster] = []


def _running(c: Cluster) -> Iterator[Cluster]:
    _clusters.append(c)
    c.start()
    try:
        yield c
    finally:
        c.stop()
        _clusters.remove(c)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from _running(
        Cluster(
            tmp_path_factory.mktemp("cluster"),
            workers=2,
            max_body_bytes=MAX_BODY_BYTES,
            allowed_origins=[TRUSTED_ORIGIN],
        )
    )


@pytest.fixture(scope="module")
def oauth_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The OAuth server with the static-users provider (alice, bob) behind the gateway."""
    yield from _running(
        Cluster(
            tmp_path_factory.mktemp("oauth-static"),
            workers=2,
            oauth="static",
            auth_env={"AUTH_REFRESH_GRACE": str(OAUTH_REFRESH_GRACE)},
        )
    )


@pytest.fixture(scope="module")
def oidc_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The OAuth server with the oidc-provider fixture as its upstream identity provider."""
    yield from _running(
        Cluster(
            tmp_path_factory.mktemp("oauth-oidc"),
            workers=2,
            oauth="oidc",
            auth_env={"AUTH_REFRESH_GRACE": str(OAUTH_REFRESH_GRACE)},
        )
    )


@pytest.fixture(scope="session")
def token(cluster: Cluster) -> str:
    """A valid bearer token for subject alice."""
    return cluster.mint("alice")


@pytest.fixture(scope="session")
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "attack: a request sequence an attacker would send; passes when it is refused safely "
        "(counted in the summary)",
    )


_attack_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "attack" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _attack_outcomes[report.nodeid] = report.outcome
    elif report.when == "teardown" and report.failed:
        _attack_outcomes[report.nodeid] = "failed"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _attack_outcomes:
        return
    safe = sum(1 for o in _attack_outcomes.values() if o == "passed")
    skipped = sum(1 for o in _attack_outcomes.values() if o == "skipped")
    terminalreporter.write_line(
        f"attack suite: {len(_attack_outcomes)} cases, {safe} refused safely"
        + (f", {skipped} skipped" if skipped else "")
        + (f", {len(_attack_outcomes) - safe - skipped} NOT refused" if len(_attack_outcomes) - safe - skipped else "")
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.failed and _clusters:
        for c in _clusters:
            for p in c.procs():
                state = "running" if p.alive() else f"exited {p.returncode()}"
                report.sections.append((f"{p.name} log tail ({state}, {p.log_path})", p.tail(30)))
    return report
