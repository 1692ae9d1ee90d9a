"""Fixtures: one real cluster per test session (nats-server, dev issuer, two workers, a gateway).

Binaries come from `target/release` (build with `cargo build --release --workspace`), nats-server
from `.venv` (scripts/install-deps.sh). Logs of every process are under the pytest temp dir and
the tail of each is attached to the report of a failing test.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Cluster  # noqa: E402

# The gateway's body limit in the shared cluster (GATEWAY_MAX_BODY_BYTES).
MAX_BODY_BYTES = 256 * 1024
# The one browser origin the shared cluster's gateway accepts (GATEWAY_ALLOWED_ORIGINS).
TRUSTED_ORIGIN = "https://trusted.example"

_clusters: list[Cluster] = []


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(
        tmp_path_factory.mktemp("cluster"),
        workers=2,
        max_body_bytes=MAX_BODY_BYTES,
        allowed_origins=[TRUSTED_ORIGIN],
    )
    _clusters.append(c)
    c.start()
    try:
        yield c
    finally:
        c.stop()
        _clusters.remove(c)


@pytest.fixture(scope="session")
def token(cluster: Cluster) -> str:
    """A valid bearer token for subject alice."""
    return cluster.mint("alice")


@pytest.fixture(scope="session")
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.failed and _clusters:
        for c in _clusters:
            for p in c.procs():
                state = "running" if p.alive() else f"exited {p.returncode()}"
                report.sections.append((f"{p.name} log tail ({state}, {p.log_path})", p.tail(30)))
    return report
