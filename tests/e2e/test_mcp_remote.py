"""npm `mcp-remote` (the stdio <-> remote proxy Claude Desktop users run as
`npx mcp-remote https://<host>/sse`) through the whole OAuth flow against a real cluster, on both
URLs a client may be given: `<gateway>/mcp` (Streamable HTTP) and `<gateway>/sse` (the legacy
HTTP+SSE transport), then `tools/call add` through it.

mcp-remote finds the protected resource metadata from the 401's WWW-Authenticate header
(`/.well-known/oauth-protected-resource/sse` for /sse, whose resource is the origin), registers a
client, opens the authorization URL "in a browser" and waits for the code on its localhost
callback server. The browser here is this very file run as a script (`--fake-browser URL`): the
headless `oauth_browser.Browser` logs in as a static user, approves consent and delivers the
code to mcp-remote's callback. It is reached through BROWSER (read by the xdg-open that npm
`open` bundles, with every desktop hint removed from the environment) and through fakes of the
openers mcp-remote falls back to, so no real browser can start.

mcp-remote is pinned in scripts/install-deps.sh (MCP_REMOTE_VERSION) and runs on Node 22 from
.tools/node; its state (client registration, tokens) goes to a temp dir per test
(MCP_REMOTE_CONFIG_DIR), so nothing leaks between runs or into ~/.mcp-auth.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from harness import REPO_ROOT, Cluster, node_binary

MCP_REMOTE_VERSION = "0.15.1"  # as pinned in scripts/install-deps.sh
MCP_REMOTE_DIR = REPO_ROOT / ".tools/node/node_modules/mcp-remote"
MCP_REMOTE_JS = MCP_REMOTE_DIR / "dist/proxy.js"

# Seconds one whole mcp-remote run may take (start-up, OAuth flow, the calls); then it fails.
RUN_TIMEOUT = 90.0
# Seconds one request after the handshake may take.
CALL_TIMEOUT = 20.0
# Seconds the fake browser may live (it is detached from the test by npm `open`).
BROWSER_TIMEOUT = 60
# Seconds mcp-remote gets to exit once its stdin is closed, and after SIGTERM.
STOP_TIMEOUT = 5.0

BROWSER_LOG_ENV = "MCP_REMOTE_E2E_BROWSER_LOG"
USER_ENV = "MCP_REMOTE_E2E_USER"
PASSWORD_ENV = "MCP_REMOTE_E2E_PASSWORD"

# What makes xdg-open (or npm `open`) pick a desktop's own opener instead of $BROWSER.
DESKTOP_ENV = (
    "DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "XDG_CURRENT_DESKTOP",
    "XDG_SESSION_DESKTOP", "DESKTOP_SESSION", "KDE_FULL_SESSION", "GNOME_DESKTOP_SESSION_ID",
    "MATE_DESKTOP_SESSION_ID", "LXQT_SESSION_CONFIG", "DESKTOP",
)
# The openers mcp-remote tries by name after npm `open` (src/lib/open-browser.ts), faked too.
OPENER_NAMES = ("xdg-open", "gio", "x-www-browser", "sensible-browser", "www-browser")


# ---------------------------------------------------------------------------------------------
# The fake browser (this file run as a script)
# ---------------------------------------------------------------------------------------------


class _BrowserTimeout(Exception):
    pass


def fake_browser(url: str) -> int:
    """Open `url` (mcp-remote's authorization URL) headlessly: log in, consent, deliver the code
    to mcp-remote's callback. Each step is one JSON line in $MCP_REMOTE_E2E_BROWSER_LOG.
    Always exits 0: a failing "browser" must not make mcp-remote try the next opener."""
    from oauth_browser import Browser

    log_path = Path(os.environ[BROWSER_LOG_ENV])

    def record(**event: Any) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(event) + "\n")

    def expire(signum: int, frame: Any) -> None:
        raise _BrowserTimeout(f"fake browser still busy after {BROWSER_TIMEOUT}s")

    signal.signal(signal.SIGALRM, expire)
    signal.alarm(BROWSER_TIMEOUT)
    record(event="open", url=url)
    try:
        redirect_uri = parse_qs(urlsplit(url).query)["redirect_uri"][0]
        with Browser(stop_at=redirect_uri) as browser:
            cb = browser.authorize(url, username=os.environ[USER_ENV], password=os.environ[PASSWORD_ENV])
            record(event="callback", url=cb.url, history=browser.history)
        # mcp-remote's callback server (loopback), as the browser would follow the redirect.
        r = httpx.get(cb.url, timeout=30.0, trust_env=False)
        record(event="delivered", status=r.status_code, body=r.text[:500])
    except BaseException:  # noqa: BLE001 - recorded for the test to report
        record(event="error", error=traceback.format_exc())
    return 0


def write_fake_browser(bin_dir: Path) -> Path:
    """A shell script that hands its last argument (the URL) to `fake_browser`, installed under
    BROWSER's name and every opener name mcp-remote might try; returns the BROWSER path."""
    bin_dir.mkdir(parents=True)
    script = (
        "#!/bin/sh\n"
        "# fake browser for test_mcp_remote.py: the URL is the last argument (gio: `open URL`)\n"
        'for url; do :; done\n'
        f'exec {shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} --fake-browser "$url"\n'
    )
    browser = bin_dir / "fake-browser"
    browser.write_text(script)
    browser.chmod(0o755)
    for name in OPENER_NAMES:
        (bin_dir / name).symlink_to(browser)
    return browser


def read_browser_log(path: Path) -> list[dict[str, Any]]:
    """The fake browser's events so far (a line still being written is left for the next read)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


# ---------------------------------------------------------------------------------------------
# mcp-remote over stdio
# ---------------------------------------------------------------------------------------------


class McpRemote:
    """`node mcp-remote/dist/proxy.js URL` with JSON-RPC over its stdin/stdout; stderr to a file."""

    def __init__(self, url: str, workdir: Path, username: str, password: str) -> None:
        self.url = url
        self.workdir = workdir
        self.config_dir = workdir / "mcp-auth"
        self.stderr_path = workdir / "mcp-remote.stderr.log"
        self.browser_log = workdir / "browser.jsonl"
        browser = write_fake_browser(workdir / "bin")
        node = node_binary()
        env = {k: v for k, v in os.environ.items() if k not in DESKTOP_ENV}
        env.update(
            PATH=os.pathsep.join([str(browser.parent), str(node.parent), env.get("PATH", "")]),
            BROWSER=str(browser),
            HOME=str(workdir / "home"),
            MCP_REMOTE_CONFIG_DIR=str(self.config_dir),
            **{BROWSER_LOG_ENV: str(self.browser_log), USER_ENV: username, PASSWORD_ENV: password},
        )
        (workdir / "home").mkdir()
        self.deadline = time.monotonic() + RUN_TIMEOUT
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._next_id = 0
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [str(node), str(MCP_REMOTE_JS), url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=workdir,
                start_new_session=True,  # its own process group, stopped as one in `close`
            )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self._lines.put(line)
        finally:
            self._lines.put(None)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self, lines: int = 60) -> str:
        tail = "\n".join(self.stderr().splitlines()[-lines:])
        browser = "\n".join(json.dumps(e) for e in read_browser_log(self.browser_log)) or "(never opened)"
        return f"--- mcp-remote {self.url} stderr (last {lines} lines):\n{tail}\n--- fake browser log:\n{browser}"

    def browser_failure(self) -> str | None:
        """What went wrong in the fake browser, if it did: an exception, or a callback that
        mcp-remote answered with an error (e.g. the authorization server refused the request)."""
        for e in read_browser_log(self.browser_log):
            if e["event"] == "error":
                return e["error"].strip().splitlines()[-1]
            if e["event"] == "delivered" and e["status"] != 200:
                return f"mcp-remote's callback answered {e['status']}: {e['body'].strip()[:300]}"
        return None

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as exc:  # it exited: say why
            raise AssertionError(f"cannot write to mcp-remote ({exc!r})\n{self.diagnostics()}") from None

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    def request(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a request; its response (result or error), within `timeout` and the run's deadline."""
        self._next_id += 1
        rid = self._next_id
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        until = min(time.monotonic() + timeout, self.deadline)
        while True:
            left = until - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no answer to {method} from mcp-remote within {timeout:.0f}s\n{self.diagnostics()}")
            try:
                line = self._lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                # mcp-remote keeps waiting after a refused authorization: fail now, not at the deadline.
                failure = self.browser_failure()
                if failure:
                    raise AssertionError(f"the login for mcp-remote failed: {failure}\n{self.diagnostics()}") from None
                continue
            if line is None:
                try:
                    status = self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    status = None
                raise AssertionError(
                    f"mcp-remote closed its stdout (exit status {status}) before answering {method}\n{self.diagnostics()}"
                )
            try:
                msg = json.loads(line)
            except ValueError:
                raise AssertionError(f"mcp-remote wrote a non-JSON line to stdout: {line!r}\n{self.diagnostics()}") from None
            if msg.get("id") == rid and "method" not in msg:
                return msg
            if "method" in msg and "id" in msg:  # a request from the server: ping, or refuse
                reply: dict[str, Any] = {"jsonrpc": "2.0", "id": msg["id"]}
                if msg["method"] == "ping":
                    reply["result"] = {}
                else:
                    reply["error"] = {"code": -32601, "message": "not supported by this test client"}
                self.send(reply)
            # notifications and anything else: ignored

    def close(self) -> None:
        """Close stdin (mcp-remote shuts down), then SIGTERM and SIGKILL its process group."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                continue
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# ---------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------


def require_mcp_remote() -> None:
    pkg = MCP_REMOTE_DIR / "package.json"
    if not (MCP_REMOTE_JS.is_file() and pkg.is_file()):
        pytest.fail(f"{MCP_REMOTE_JS} missing: run scripts/install-deps.sh")
    version = json.loads(pkg.read_text()).get("version")
    if version != MCP_REMOTE_VERSION:
        pytest.fail(f"mcp-remote {version} installed, {MCP_REMOTE_VERSION} expected: run scripts/install-deps.sh")


@pytest.mark.parametrize("path", ["/mcp", "/sse"])
def test_mcp_remote_logs_in_and_calls_add(oauth_cluster: Cluster, tmp_path: Path, path: str) -> None:
    require_mcp_remote()
    gw = oauth_cluster.gateway
    assert gw is not None
    url = gw.base_url + path
    username = "alice"
    proxy = McpRemote(url, tmp_path, username, oauth_cluster.passwords()[username])
    try:
        # The first request meets the 401: discovery, registration, browser login, token, then
        # the handshake goes through (so most of the run's time budget is for this one).
        init = proxy.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "mcp-cluster e2e (mcp-remote)", "version": "0"},
            },
            timeout=RUN_TIMEOUT,
        )
        assert "result" in init, f"initialize: {init}\n{proxy.diagnostics()}"
        assert init["result"]["serverInfo"]["name"] == "mcp-cluster", init
        proxy.notify("notifications/initialized")

        tools = proxy.request("tools/list", {}, timeout=CALL_TIMEOUT)
        assert "result" in tools, f"tools/list: {tools}\n{proxy.diagnostics()}"
        assert "add" in {t["name"] for t in tools["result"]["tools"]}, tools

        call = proxy.request("tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}}, timeout=CALL_TIMEOUT)
        assert "result" in call, f"tools/call: {call}\n{proxy.diagnostics()}"
        assert not call["result"].get("isError"), call
        text = "".join(c.get("text", "") for c in call["result"]["content"] if c.get("type") == "text")
        assert text.strip() == "5", call
    finally:
        proxy.close()
        # pytest shows this only for a failing test.
        print(proxy.diagnostics(lines=400))

    stderr = proxy.stderr()
    # It went over the transport the URL names: Streamable HTTP on /mcp; on /sse the POST is
    # refused (404) and mcp-remote falls back to the legacy SSE transport.
    transport = {"/mcp": "StreamableHTTPClientTransport", "/sse": "SSEClientTransport"}[path]
    assert f"Connected to remote server using {transport}" in stderr, proxy.diagnostics()

    # One browser login, whose code reached mcp-remote's callback.
    events = read_browser_log(proxy.browser_log)
    opened = [e for e in events if e["event"] == "open"]
    assert len(opened) == 1, events
    assert [e["event"] for e in events] == ["open", "callback", "delivered"], events
    delivered = events[-1]
    assert delivered["status"] == 200 and "Authorization successful" in delivered["body"], delivered
    callback = parse_qs(urlsplit(events[1]["url"]).query)
    assert callback.get("code") and callback.get("iss") == [oauth_cluster.issuer], events[1]
    assert urlsplit(events[1]["url"]).hostname in ("localhost", "127.0.0.1"), events[1]

    # The resource it asked for is the one the URL's protected resource metadata names:
    # <origin>/mcp for /mcp, the origin for /sse (mcp-remote writes it with a trailing slash).
    query = parse_qs(urlsplit(opened[0]["url"]).query)
    expected = {"/mcp": gw.resource, "/sse": gw.base_url}[path]
    assert [r.rstrip("/") for r in query.get("resource", [])] == [expected], opened[0]["url"]
    assert opened[0]["url"].startswith(f"{oauth_cluster.issuer}/authorize?"), opened[0]["url"]

    # Its token store (in the per-test config dir) holds this cluster's token for alice.
    stores = list(proxy.config_dir.glob("mcp-remote-v*/*_tokens.json"))
    assert len(stores) == 1, stores
    claims = jwt_claims(json.loads(stores[0].read_text())["access_token"])
    assert claims["iss"] == oauth_cluster.issuer and claims["sub"] == username, claims


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--fake-browser":
        sys.exit(fake_browser(sys.argv[-1]))
    sys.exit(f"usage: {sys.argv[0]} --fake-browser URL (run by mcp-remote in test_mcp_remote.py)")
