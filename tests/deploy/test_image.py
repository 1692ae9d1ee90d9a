"""The container image: scripts/image.sh (`make image`) builds it without a daemon as an OCI image
layout, target/image/mcp-cluster; deploy/Dockerfile builds the same layout with Docker.

- The layout is read by hand, as the OCI image spec has it: `oci-layout`, `index.json` (the
  version tag and `latest`, one manifest), the manifest, the config, and the layer, each blob
  checked against its digest and size and the layer against the config's `diff_id`.
- The config: user 65532:65532, the gateway as command, no entrypoint, the environment, ports
  and labels. The layer holds the three binaries (stripped, executable), the shared libraries
  they link, /etc/passwd and /etc/group with `nonroot`, the CA bundle, /tmp (1777) and nothing
  else: no shell, no /root, nothing of the source tree; everything owned by root except
  /home/nonroot. The image's size is written to tests/deploy/artifacts/image.txt and must stay
  within a budget.
- Each binary runs in the unpacked root file system (`chroot --userspec=65532:65532`, sharing
  the host's loopback) against a real nats-server: the auth-service, a session worker and the
  gateway answer /healthz and /readyz as uid 65532. An MCP `initialize` goes through the gateway
  to the worker with a token of an issuer served over HTTPS by a certificate authority that is
  only in the image's /etc/ssl/certs/ca-certificates.crt: the binaries verify TLS with the
  image's CA bundle (rustls with the platform's roots). On SIGTERM each exits with status 0.
- deploy/Dockerfile agrees with the built image (user, working directory, environment, ports,
  command, labels, paths of the binaries) and .dockerignore keeps the workspace in the context.
- A second run of scripts/image.sh gives the same digest (reproducible, idempotent).

Not checked here (no Docker engine on this machine): `docker build` of deploy/Dockerfile itself.

Contract: issue "Deploy and watch it" (container image); runbook: deploy/README.md "Container image".
"""

from __future__ import annotations

import base64
import datetime
import fnmatch
import gzip
import hashlib
import http.server
import ipaddress
import json
import os
import re
import shlex
import shutil
import ssl
import stat
import subprocess
import sys
import tarfile
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from harness import (  # noqa: E402
    NatsServer, Proc, cookie_key, dev_key_kid, free_port, retry_until, vault_keys, wait_http_ok,
)
from mcp_http import headers, initialize_msg, response_for  # noqa: E402

IMAGE_SCRIPT = ROOT / "scripts" / "image.sh"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LAYOUT = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "image" / "mcp-cluster"
ARTIFACTS = ROOT / "tests" / "deploy" / "artifacts"
VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]

BINARIES = ("gateway", "session-worker", "auth-service")
NONROOT = 65532
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
# Compressed size (the blobs a registry stores); the stripped binaries are about 21 MiB of it.
SIZE_BUDGET = 48 * 1024 * 1024
STOP_DEADLINE = 20.0  # seconds a service may take to drain and exit after SIGTERM

# What the layer holds besides the shared libraries: path → (type, mode, owner uid = gid).
EXPECTED = {
    ".": ("dir", 0o755, 0),
    "etc": ("dir", 0o755, 0),
    "etc/passwd": ("file", 0o644, 0),
    "etc/group": ("file", 0o644, 0),
    "etc/nsswitch.conf": ("file", 0o644, 0),
    "etc/ssl": ("dir", 0o755, 0),
    "etc/ssl/certs": ("dir", 0o755, 0),
    "etc/ssl/certs/ca-certificates.crt": ("file", 0o644, 0),
    "home": ("dir", 0o755, 0),
    "home/nonroot": ("dir", 0o700, NONROOT),
    "tmp": ("dir", 0o1777, 0),
    "usr": ("dir", 0o755, 0),
    "usr/local": ("dir", 0o755, 0),
    "usr/local/bin": ("dir", 0o755, 0),
    **{f"usr/local/bin/{b}": ("file", 0o755, 0) for b in BINARIES},
}
# Optional entries: the loader, shared libraries, and the record of the Debian packages they
# come from (/etc/os-release, /var/lib/dpkg/status.d/<package>, as distroless has them).
ALLOWED = [
    r"lib(64)?|usr/lib(64)?|lib/[\w.-]+-linux-gnu|usr/lib/[\w.-]+-linux-gnu",
    r"(usr/)?lib(64)?/([\w.-]+-linux-gnu/)?(ld-linux[\w.-]*\.so\.\d+|lib[\w.+-]+\.so(\.\d+)*)",
    r"etc/os-release",
    r"var|var/lib|var/lib/dpkg|var/lib/dpkg/status\.d|var/lib/dpkg/status\.d/[a-z0-9][a-z0-9.+-]*",
]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def chroot_bin() -> str:
    path = shutil.which("chroot") or ("/usr/sbin/chroot" if os.access("/usr/sbin/chroot", os.X_OK) else None)
    assert path, "chroot is missing (Debian package coreutils): the test runs the binaries in the image's root"
    return path


# --- the OCI layout, read by hand -----------------------------------------------------------------


@dataclass
class Image:
    digest: str  # the manifest's, as scripts/image.sh prints it
    script_log: str
    index: dict[str, Any]
    manifest: dict[str, Any]
    config: dict[str, Any]
    members: list[tarfile.TarInfo]
    compressed_bytes: int
    unpacked_bytes: int
    rootfs: Path
    binaries: dict[str, tuple[int, int]]  # target/release binaries' (mtime, size) when built


def release_stamps() -> dict[str, tuple[int, int]]:
    release = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    return {b: (st.st_mtime_ns, st.st_size) for b in BINARIES for st in [(release / b).stat()]}


def blob(digest: str, size: int | None = None) -> bytes:
    algo, _, hexdigest = digest.partition(":")
    assert algo == "sha256" and re.fullmatch(r"[0-9a-f]{64}", hexdigest), f"bad digest {digest!r}"
    data = (LAYOUT / "blobs" / "sha256" / hexdigest).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hexdigest, f"blob {digest} does not match its digest"
    if size is not None:
        assert len(data) == size, f"blob {digest}: {len(data)} bytes, the descriptor says {size}"
    return data


def build_image() -> tuple[str, str]:
    """Run scripts/image.sh; return the digest it prints and its log."""
    assert shutil.which("umoci"), "umoci is missing: `apt-get install -y umoci` (scripts/install-deps.sh installs it)"
    out = subprocess.run(["bash", str(IMAGE_SCRIPT)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, f"scripts/image.sh failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    digest = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"scripts/image.sh printed no digest: {out.stdout!r}"
    return digest, out.stderr


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    if os.geteuid() != 0:
        pytest.fail("test_image.py needs root: scripts/image.sh records file owners with umoci and the "
                    "binaries run under chroot(8) (CI runs as root)")
    chroot_bin()
    stamps = release_stamps()
    digest, log = build_image()

    assert json.loads((LAYOUT / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((LAYOUT / "index.json").read_text())
    assert index["schemaVersion"] == 2, index
    tags = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
    assert set(tags) == {VERSION, "latest"}, f"tags {sorted(tags)}: want the version {VERSION} and latest"
    assert {m["digest"] for m in index["manifests"]} == {digest}, index
    desc = tags[VERSION]
    assert desc["mediaType"] == MANIFEST_TYPE, desc
    manifest = json.loads(blob(desc["digest"], desc["size"]))
    assert manifest["schemaVersion"] == 2 and manifest["config"]["mediaType"] == CONFIG_TYPE, manifest
    config = json.loads(blob(manifest["config"]["digest"], manifest["config"]["size"]))
    assert len(manifest["layers"]) == 1, f"one layer expected: {manifest['layers']}"
    layer_desc = manifest["layers"][0]
    assert layer_desc["mediaType"] == LAYER_TYPE, layer_desc
    tar_bytes = gzip.decompress(blob(layer_desc["digest"], layer_desc["size"]))
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]}

    rootfs = tmp_path_factory.mktemp("image") / "rootfs"
    rootfs.mkdir()
    layer_path = rootfs.parent / "layer.tar"
    layer_path.write_bytes(tar_bytes)
    with tarfile.open(layer_path) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        for name in names:  # checked before anything is written
            assert not name.startswith("/") and ".." not in Path(name).parts, f"unsafe path in the layer: {name!r}"
        # fully_trusted: keep owners, the sticky bit of /tmp and the modes exactly as packed.
        tar.extractall(rootfs, numeric_owner=True, filter="fully_trusted")
    return Image(
        digest=digest, script_log=log, index=index, manifest=manifest, config=config, members=members,
        compressed_bytes=manifest["config"]["size"] + layer_desc["size"] + desc["size"],
        unpacked_bytes=sum(m.size for m in members if m.isfile()), rootfs=rootfs, binaries=stamps,
    )


def test_image_config_runs_as_nonroot_with_the_gateway_as_command(image: Image) -> None:
    cfg = image.config
    assert cfg["os"] == "linux" and cfg["architecture"] in ("amd64", "arm64"), cfg
    c = cfg["config"]
    assert c["User"] == f"{NONROOT}:{NONROOT}", f"the image must run as nonroot: User={c.get('User')!r}"
    assert not c.get("Entrypoint"), f"no entrypoint (the Deployments set `command`): {c.get('Entrypoint')}"
    assert c["Cmd"] == ["/usr/local/bin/gateway"], c.get("Cmd")
    assert c["WorkingDir"] == "/home/nonroot", c.get("WorkingDir")
    env = dict(e.split("=", 1) for e in c["Env"])
    assert "/usr/local/bin" in env["PATH"].split(":"), env
    assert env["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt", env
    for var, port in [("GATEWAY_LISTEN", 8788), ("GATEWAY_ADMIN_LISTEN", 9788), ("WORKER_ADMIN_LISTEN", 9790),
                      ("AUTH_LISTEN", 8790), ("AUTH_ADMIN_LISTEN", 9791)]:
        assert env.get(var) == f"0.0.0.0:{port}", f"{var}={env.get(var)!r}: a container must not listen on loopback"
        assert f"{port}/tcp" in c["ExposedPorts"], c["ExposedPorts"]
    labels = c["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION, labels
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0", labels
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", labels["org.opencontainers.image.revision"]), labels
    assert labels["org.opencontainers.image.created"] == cfg["created"], labels
    assert image.manifest["annotations"]["org.opencontainers.image.version"] == VERSION


def test_layer_holds_the_binaries_and_their_runtime_only(image: Image) -> None:
    by_name = {m.name.removeprefix("./") or ".": m for m in image.members}
    for name, (kind, mode, owner) in EXPECTED.items():
        m = by_name.get(name)
        assert m is not None, f"{name} is missing from the layer"
        assert (m.isdir() if kind == "dir" else m.isfile()), f"{name}: not a {kind}"
        assert stat.S_IMODE(m.mode) == mode, f"{name}: mode {oct(stat.S_IMODE(m.mode))}, want {oct(mode)}"
        assert (m.uid, m.gid) == (owner, owner), f"{name}: owner {m.uid}:{m.gid}, want {owner}:{owner}"
    unexpected = [n for n in by_name if n not in EXPECTED and not any(re.fullmatch(p, n) for p in ALLOWED)]
    assert not unexpected, f"unexpected entries in the layer (no shell, sources or /root belong there): {unexpected}"
    for name, m in by_name.items():
        assert m.isdir() or m.isfile() or m.issym(), f"{name}: neither file, directory nor symlink"
        assert not m.mode & (stat.S_ISUID | stat.S_ISGID), f"{name}: setuid/setgid"
        if name != "tmp":
            assert not m.mode & stat.S_IWOTH, f"{name}: world-writable"
        if name != "home/nonroot":
            assert (m.uid, m.gid) == (0, 0), f"{name}: owned by {m.uid}:{m.gid}, want root"
    for shell in ("bin/sh", "bin/bash", "bin/dash", "bin/busybox", "usr/bin/sh"):
        assert shell not in by_name, f"{shell} in the image: it needs no shell"
    assert "root" not in by_name
    assert not any(re.search(r"\.(rs|toml|lock|py)$|(^|/)\.git(/|$)", n) for n in by_name), "source files in the layer"

    rootfs = image.rootfs
    assert (rootfs / "etc/passwd").read_text().splitlines().count(
        f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin") == 1
    assert f"nonroot:x:{NONROOT}:" in (rootfs / "etc/group").read_text().splitlines()
    assert "hosts: files dns" in (rootfs / "etc/nsswitch.conf").read_text().splitlines()
    bundle = (rootfs / "etc/ssl/certs/ca-certificates.crt").read_text()
    assert bundle.count("-----BEGIN CERTIFICATE-----") >= 100, "the CA bundle looks empty"

    readelf = shutil.which("readelf")
    for b in BINARIES:
        path = rootfs / "usr/local/bin" / b
        assert path.read_bytes()[:4] == b"\x7fELF" and os.access(path, os.X_OK), f"{b} is not an executable"
        if readelf:  # binutils, which scripts/image.sh needs for strip
            sections = subprocess.run([readelf, "-S", "-W", str(path)], capture_output=True, text=True, check=True)
            assert ".symtab" not in sections.stdout and ".debug_info" not in sections.stdout, f"{b} is not stripped"
            interp = subprocess.run([readelf, "-l", "-W", str(path)], capture_output=True, text=True, check=True)
            m = re.search(r"Requesting program interpreter: (\S+)\]", interp.stdout)
            assert m is None or (rootfs / m.group(1).lstrip("/")).exists(), f"{b}: loader {m and m.group(1)} missing"
            dynamic = subprocess.run([readelf, "-d", "-W", str(path)], capture_output=True, text=True, check=True)
            lib_dirs = [d for pattern in ("lib", "lib64", "usr/lib", "lib/*-linux-gnu", "usr/lib/*-linux-gnu")
                        for d in rootfs.glob(pattern)]
            needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic.stdout)
            assert "libc.so.6" in needed, f"{b}: readelf -d shows no libc: {dynamic.stdout[:500]}"
            for lib in needed:
                assert any((d / lib).is_file() for d in lib_dirs), f"{b} links {lib}, which the image lacks"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report = (f"mcp-cluster:{VERSION} {image.digest}\n"
              f"compressed {image.compressed_bytes} bytes ({image.compressed_bytes / 2**20:.1f} MiB), "
              f"unpacked {image.unpacked_bytes} bytes ({image.unpacked_bytes / 2**20:.1f} MiB)\n")
    (ARTIFACTS / "image.txt").write_text(report)
    print(report, end="")
    assert image.compressed_bytes <= SIZE_BUDGET, f"the image grew beyond {SIZE_BUDGET / 2**20:.0f} MiB: {report}"


def test_oci_archive_holds_the_layout(image: Image) -> None:
    with tarfile.open(LAYOUT.parent / (LAYOUT.name + ".tar")) as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
    assert {"oci-layout", "index.json"} <= names, sorted(names)[:10]
    for desc in [image.index["manifests"][0], image.manifest["config"], *image.manifest["layers"]]:
        assert f"blobs/sha256/{desc['digest'].split(':')[1]}" in names, f"{desc['digest']} missing from the archive"


# --- the binaries, run in the image's root file system --------------------------------------------


@dataclass
class TlsIssuer:
    """An issuer's discovery document and JWKS over HTTPS (127.0.0.1), with a certificate of a
    fresh certificate authority; `ca_pem` is that authority, trusted nowhere yet."""

    url: str
    ca_pem: bytes
    server: http.server.ThreadingHTTPServer
    requests: list[str]


def make_certificates() -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate for 127.0.0.1, server key), PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mcp-cluster test_image CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return (
        ca.public_bytes(serialization.Encoding.PEM),
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )


def start_tls_issuer(workdir: Path, signing_key: Path) -> TlsIssuer:
    """Serve discovery and the JWKS of `signing_key` (the auth-service's Ed25519 dev key)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

    ca_pem, cert_pem, key_pem = make_certificates()
    (workdir / "tls.crt").write_bytes(cert_pem)
    (workdir / "tls.key").write_bytes(key_pem)
    public = load_pem_private_key(signing_key.read_bytes(), password=None).public_key()
    x = b64url(public.public_bytes(Encoding.Raw, PublicFormat.Raw))  # type: ignore[union-attr]
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": dev_key_kid(signing_key), "alg": "EdDSA", "use": "sig"}
    requests: list[str] = []
    docs: dict[str, Any] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            requests.append(self.path)
            doc = docs.get(self.path)
            body = json.dumps(doc).encode() if doc is not None else b"{}"
            self.send_response(200 if doc is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(workdir / "tls.crt", workdir / "tls.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    url = f"https://127.0.0.1:{server.server_address[1]}"
    meta = {"issuer": url, "jwks_uri": f"{url}/jwks.json"}
    docs.update({"/.well-known/openid-configuration": meta, "/.well-known/oauth-authorization-server": meta,
                 "/jwks.json": {"keys": [jwk]}})
    threading.Thread(target=server.serve_forever, name="tls-issuer", daemon=True).start()
    return TlsIssuer(url, ca_pem, server, requests)


class ImageProcs:
    """The image's binaries under chroot(8) as 65532:65532, with the image's environment plus
    `env` (no variable of the test's own environment leaks in)."""

    def __init__(self, image: Image, workdir: Path) -> None:
        self.image = image
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.base_env = dict(e.split("=", 1) for e in image.config["config"]["Env"])
        self.base_env["HOME"] = image.config["config"]["WorkingDir"]  # as a container runtime sets it

    def argv(self, binary: str, *args: str) -> list[str]:
        return [chroot_bin(), f"--userspec={NONROOT}:{NONROOT}", str(self.image.rootfs),
                f"/usr/local/bin/{binary}", *args]

    def start(self, name: str, binary: str, env: dict[str, str]) -> Proc:
        proc = Proc(name, self.argv(binary), {**self.base_env, **env}, self.workdir / "logs" / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    def run(self, binary: str, *args: str) -> str:
        out = subprocess.run(self.argv(binary, *args), env=self.base_env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"{binary} {shlex.join(args)}: {out.returncode}\n{out.stderr}"
        return out.stdout

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def uid_of(proc: Proc) -> int:
    status = Path(f"/proc/{proc.pid}/status").read_text()
    m = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, flags=re.M)
    assert m, status
    return int(m.group(2))  # effective


def stop_cleanly(proc: Proc) -> None:
    """SIGTERM, then the process must exit by itself with status 0 within STOP_DEADLINE."""
    assert proc.popen is not None
    proc.popen.terminate()
    try:
        rc = proc.popen.wait(timeout=STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        proc.popen.kill()
        proc.popen.wait()
        raise AssertionError(f"{proc.name} still running {STOP_DEADLINE:.0f}s after SIGTERM:\n{proc.tail()}") from None
    assert rc == 0, f"{proc.name} exited with status {rc} after SIGTERM:\n{proc.tail()}"


@pytest.fixture()
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def test_binaries_run_in_the_image_as_nonroot(image: Image, nats: NatsServer, tmp_path: Path) -> None:
    rootfs = image.rootfs
    run = ImageProcs(image, tmp_path)
    for b in BINARIES:
        assert run.run(b, "--version").startswith(f"{b} {VERSION}"), f"{b} --version"
    # The static-users provider (the default upstream) needs its users file; /tmp is the only
    # directory nonroot may write, so the development key goes there too.
    shutil.copy(ROOT / "deploy" / "local" / "static-users.json", rootfs / "tmp" / "static-users.json")
    os.chmod(rootfs / "tmp" / "static-users.json", 0o644)
    auth_port, auth_admin, worker_admin, gw_port, gw_admin = (free_port() for _ in range(5))
    issuer: TlsIssuer | None = None
    try:
        auth = run.start("auth-service", "auth-service", {
            "NATS_URL": nats.url,
            "AUTH_LISTEN": f"127.0.0.1:{auth_port}", "AUTH_ADMIN_LISTEN": f"127.0.0.1:{auth_admin}",
            "AUTH_ISSUER_URL": f"http://127.0.0.1:{auth_port}", "AUTH_VAULT_KEYS": vault_keys(),
            "COOKIE_ENCRYPTION_KEY": cookie_key(), "AUTH_STATIC_USERS_FILE": "/tmp/static-users.json",
            "AUTH_DEV_KEY_FILE": "/tmp/dev-issuer-ed25519.pem",
        })
        wait_http_ok(auth, f"http://127.0.0.1:{auth_admin}/healthz")
        wait_http_ok(auth, f"http://127.0.0.1:{auth_admin}/readyz")
        dev_key = rootfs / "tmp" / "dev-issuer-ed25519.pem"
        retry_until(dev_key.exists, 10, "the auth-service writes its dev key in the image's /tmp")
        assert dev_key.stat().st_uid == NONROOT, "the dev key was not written by uid 65532"
        jwks = httpx.get(f"http://127.0.0.1:{auth_port}/jwks.json", timeout=5).json()
        assert any(k["kid"] == dev_key_kid(dev_key) for k in jwks["keys"]), jwks

        worker = run.start("session-worker", "session-worker", {
            "NATS_URL": nats.url, "WORKER_ADMIN_LISTEN": f"127.0.0.1:{worker_admin}", "WORKER_ID": "image-worker",
        })
        wait_http_ok(worker, f"http://127.0.0.1:{worker_admin}/healthz")
        wait_http_ok(worker, f"http://127.0.0.1:{worker_admin}/readyz")

        # The gateway trusts an issuer served over HTTPS by a CA that only the image's bundle
        # (appended to it here, in this unpacked copy) contains.
        issuer = start_tls_issuer(tmp_path, dev_key)
        with open(rootfs / "etc/ssl/certs/ca-certificates.crt", "ab") as bundle:
            bundle.write(issuer.ca_pem)
        resource = f"http://127.0.0.1:{gw_port}/mcp"
        gateway = run.start("gateway", "gateway", {
            "NATS_URL": nats.url,
            "GATEWAY_LISTEN": f"127.0.0.1:{gw_port}", "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{gw_admin}",
            "ALLOWED_ISSUERS": issuer.url, "RESOURCE_IDENTIFIER": resource,
        })
        wait_http_ok(gateway, f"http://127.0.0.1:{gw_admin}/healthz")
        wait_http_ok(gateway, f"http://127.0.0.1:{gw_admin}/readyz")

        for proc in (auth, worker, gateway):
            assert uid_of(proc) == NONROOT, f"{proc.name} does not run as {NONROOT}"

        token = run.run("auth-service", "mint-token", "--key-file", "/tmp/dev-issuer-ed25519.pem",
                        "--issuer", issuer.url, "--audience", resource, "--sub", "alice").strip()
        r = httpx.post(resource, json=initialize_msg(), headers=headers(token), timeout=30)
        assert r.status_code == 200, (
            f"initialize through the gateway: {r.status_code} {r.text}\n(issuer requests: {issuer.requests})\n"
            f"--- gateway log:\n{gateway.tail(15)}"
        )
        assert "/jwks.json" in issuer.requests, issuer.requests
        assert "result" in response_for(r, 1), r.text

        for proc in (gateway, worker, auth):
            stop_cleanly(proc)
    finally:
        run.stop_all()
        if issuer is not None:
            issuer.server.shutdown()
            issuer.server.server_close()


# --- deploy/Dockerfile and .dockerignore against the built image ----------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def key_values(args: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in shlex.split(args))


def test_dockerfile_builds_the_same_image(image: Image) -> None:
    inst = dockerfile_instructions()
    args = {k: v for word, rest in inst if word == "ARG" and "=" in rest for k, v in [rest.split("=", 1)]}
    assert args["RUST_IMAGE"] == "rust:1.95-bookworm", args
    assert args["RUNTIME_IMAGE"] == "gcr.io/distroless/cc-debian12:nonroot", args
    assert args["VERSION"] == VERSION, f"deploy/Dockerfile ARG VERSION={args['VERSION']}, Cargo.toml says {VERSION}"
    froms = [i for i, (word, _) in enumerate(inst) if word == "FROM"]
    assert len(froms) == 2, "a builder stage and a runtime stage"
    builder, runtime = inst[froms[0]:froms[1]], inst[froms[1]:]
    build = " ".join(rest for word, rest in builder if word == "RUN")
    assert "cargo build --release --locked -p gateway -p session-worker -p auth-service" in build, build
    assert "--mount=type=cache" in build, "the cargo registry and target directory belong in cache mounts"

    c = image.config["config"]
    env: dict[str, str] = {}
    for word, rest in runtime:
        if word == "ENV":
            env.update(key_values(rest))
    image_env = dict(e.split("=", 1) for e in c["Env"])
    image_env.pop("PATH")  # distroless sets the same PATH
    assert env == image_env, f"Dockerfile ENV {env} != image Env {image_env}"
    exposed = {p for word, rest in runtime if word == "EXPOSE" for p in rest.split()}
    assert exposed == set(c["ExposedPorts"]), (exposed, c["ExposedPorts"])
    single = {word: rest for word, rest in runtime if word in ("USER", "WORKDIR", "CMD", "STOPSIGNAL", "COPY")}
    assert single["USER"] == c["User"]
    assert single["WORKDIR"] == c["WorkingDir"]
    assert json.loads(single["CMD"]) == c["Cmd"]
    assert single["STOPSIGNAL"] == c["StopSignal"]
    assert not any(word == "ENTRYPOINT" for word, _ in runtime)
    assert single["COPY"].split()[-1] == "/usr/local/bin/", single["COPY"]
    for b in BINARIES:
        assert f"target/release/{b}" in build, f"the builder stage does not hand over {b}"
    labels = {k: v for word, rest in runtime if word == "LABEL" for k, v in key_values(rest).items()}
    for key in ("org.opencontainers.image.title", "org.opencontainers.image.description",
                "org.opencontainers.image.licenses"):
        assert labels[key] == c["Labels"][key], key
    assert set(labels) <= set(c["Labels"]), set(labels) - set(c["Labels"])


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops `path` or one of its parents (the patterns used here:
    names and `**/` prefixes; no `!` exceptions)."""
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        for p in patterns:
            if fnmatch.fnmatchcase(prefix, p.strip("/")) or (
                    p.startswith("**/") and fnmatch.fnmatchcase(parts[i - 1], p[3:])):
                return True
    return False


def test_dockerignore_keeps_the_workspace_in_the_build_context() -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "ignored() does not handle exceptions"
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    # README.md: tools/src/lib.rs includes it.
    for path in ["Cargo.toml", "Cargo.lock", "README.md", *members, *(f"{m}/Cargo.toml" for m in members),
                 *(f"{m}/src" for m in members)]:
        assert not ignored(path, patterns), f".dockerignore drops {path}, which `cargo build` needs"
    for path in ["target", ".git", ".venv", "tests", "tests/browser/node_modules"]:
        assert ignored(path, patterns), f".dockerignore should drop {path}"


def test_image_sh_is_reproducible(image: Image) -> None:
    digest, _ = build_image()
    assert release_stamps() == image.binaries, "target/release changed during the test (a build ran): run it again"
    assert digest == image.digest, "a second run of scripts/image.sh gave another digest from the same binaries"
