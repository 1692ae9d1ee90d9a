"""The Helm chart (deploy/helm/mcp-cluster), rendered and checked offline: no cluster, no
helm binary, no network.

- `helm lint --strict` through helm-python-sdk (Helm 4's Go SDK as a C library) passes with
  no message for the default and the all-on values;
- `helm template` renders the defaults (plus the values the chart requires), several NATS
  servers, each IdP preset, everything optional off, everything on, and existing Secrets; values
  the schema must reject (wrong types, an unknown IdP preset, an unknown key) and settings the
  chart refuses (no NATS URL, a grace period shorter than the worker's drain, no vault key) fail
  to render, naming the value;
- the chart installs no NATS (no vendored chart, no dependency): every service's NATS_URL is
  `nats.url` as given; deploy/helm/nats-values.yaml, the official NATS chart's values, parses and
  asks for JetStream and a three-server cluster;
- every rendered object validates against the Kubernetes 1.30 and 1.37 OpenAPI schemas
  (kubernetes-validate, strict: unknown fields fail); ServiceMonitor and PrometheusRule, which
  it does not know, are checked by hand, and the PrometheusRule's groups equal
  deploy/prometheus/rules.yaml's;
- the Ingress sends exactly proto::auth::PUBLIC_PATHS (parsed from proto/src/auth.rs) and
  everything under PUBLIC_PREFIXES to the auth-service, and /mcp, /sse, /messages and
  /.well-known/oauth-protected-resource to the gateways (Kubernetes' matching: longest path
  wins, Exact before Prefix);
- what a schema cannot say: every container of ours runs as non-root 65532 with a read-only
  root file system and no capability; the worker's grace period outlasts its drain; probes
  ask /healthz and /readyz on the port the admin listener binds; every variable the chart sets
  is one that binary's sources read (so an invented name fails); Services, PDBs,
  NetworkPolicies, the ServiceMonitor, the Ingress and the HPAs point at objects and ports that
  exist; Secret references resolve; the dashboard ConfigMap holds deploy/grafana/mcp-cluster.json;
  the chart's copies of rules.yaml and the dashboard are byte-identical to deploy/'s.

Not shown here (needs a real cluster): that pods start, become ready and drain as intended,
that an ingress controller honours the routing, that the CNI enforces the NetworkPolicies.

Contract: issue "Deploy and watch it" (Helm chart); runbook: deploy/README.md "Install with Helm",
"Routing" (the chart's Ingress).
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import helm_python as helm
    import kubernetes_validate
    import kubernetes_validate.utils as kv_utils
    import yaml
except ImportError as e:  # failing, not skipping: a missing tool must not pass CI silently
    MISSING = f"{e}: run `bash scripts/install-deps.sh` (tests/requirements.txt: helm-python-sdk, kubernetes-validate)"
else:
    MISSING = ""

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "mcp-cluster"
NATS_VALUES = ROOT / "deploy" / "helm" / "nats-values.yaml"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "mcp-cluster.json"
PROTO_AUTH = ROOT / "proto" / "src" / "auth.rs"
UPSTREAM_CONFIG = ROOT / "auth-service" / "src" / "upstream" / "config.rs"
RELEASE, NAMESPACE = "mcp", "mcp-prod"
KUBE_VERSIONS = ["1.30.0", "1.37.0"]  # the chart's kubeVersion floor, and the newest schemas
BINARIES = {  # entrypoint in the image → its crate
    "/usr/local/bin/gateway": "gateway",
    "/usr/local/bin/session-worker": "session-worker",
    "/usr/local/bin/auth-service": "auth-service",
}
# A real argon2id hash (of "alice-dev-password", deploy/local/static-users.json).
HASH = "$argon2id$v=19$m=19456,t=2,p=1$bLwxXeGYYD/FntLUqe/bQA$jtxdGIIFfaOggXnxHe+ksIkhlfLaa79QVgvZYyuXlXM"
VAULT_KEYS = "k1:" + base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")
COOKIE_KEY = "0123456789abcdef0123456789abcdef-cookie"

# The values the chart requires (it has no safe default for them); "defaults" adds only these.
BASE: dict[str, Any] = {
    "publicUrl": "https://mcp.example.com",
    "nats": {"url": "nats://nats.mcp.svc:4222"},
    "auth": {
        "vaultKeys": {"value": VAULT_KEYS},
        "cookieKey": {"value": COOKIE_KEY},
        "idp": {
            "staticUsers": {
                "users": [{"username": "alice", "password_hash": HASH, "permissions": ["image_generation"]}]
            }
        },
    },
}
NATS_SERVERS = {  # several servers named, one stream replica
    "url": "nats://nats-0.nats.infra:4222,nats://nats-1.nats.infra:4222",
    "streamReplicas": 1,
}
PRESETS: dict[str, dict[str, Any]] = {
    "static-users": {},
    "oidc": {
        "clientId": "mcp",
        "clientSecret": {"value": "s3cret"},
        "oidc": {
            "issuer": "https://id.example.com/realms/x",
            "scopes": "openid email offline_access",
            "permissionsClaim": "realm_access.roles",
        },
    },
    "workos": {
        "clientId": "client_01",
        "clientSecret": {"value": "sk_test"},
        "workos": {"apiUrl": "https://api.workos.com"},
    },
    "cloudflare-access": {
        "clientId": "cf-client",
        "clientSecret": {"value": "cf-secret"},
        "cloudflareAccess": {
            "tokenUrl": "https://team.cloudflareaccess.com/cdn-cgi/access/sso/oidc/cf-client/token",
            "authorizationUrl": "https://team.cloudflareaccess.com/cdn-cgi/access/sso/oidc/cf-client/authorization",
            "jwksUrl": "https://team.cloudflareaccess.com/cdn-cgi/access/sso/oidc/cf-client/jwks",
        },
    },
    "pingone": {
        "clientId": "p1-client",
        "clientSecret": {"value": "p1-secret"},
        "pingone": {"issuer": "https://auth.pingone.com/0f1e2d3c-0000-4000-8000-000000000000/as"},
    },
    "entra": {
        "clientId": "entra-app",
        "clientSecret": {"value": "entra-secret"},
        "entra": {"tenantId": "0f1e2d3c-0000-4000-8000-000000000000"},
    },
    "github": {"clientId": "Iv1.abc", "clientSecret": {"value": "gh-secret"}},
}
ALL_OFF: dict[str, Any] = {
    "ingress": {"enabled": False},
    "metrics": {
        "serviceMonitor": {"enabled": False},
        "prometheusRule": {"enabled": False},
        "dashboard": {"enabled": False},
    },
    "networkPolicy": {"enabled": False},
    "gateway": {
        "autoscaling": {"enabled": False},
        "pdb": {"enabled": False},
        "spreadAcrossNodes": False,
        "preStopSleepSeconds": 0,
    },
    "worker": {
        "autoscaling": {"enabled": False},
        "pdb": {"enabled": False},
        "spreadAcrossNodes": False,
        "preStopSleepSeconds": 0,
    },
    "auth": {"pdb": {"enabled": False}, "spreadAcrossNodes": False, "preStopSleepSeconds": 0},
    "serviceAccount": {"create": False},
}
ALL_ON: dict[str, Any] = {
    "tracing": {"endpoint": "http://otel-collector.monitoring.svc:4318", "sampler": "always_on", "samplerArg": "1"},
    "image": {"repository": "registry.example.com/mcp-cluster", "digest": "sha256:" + "ab" * 32},
    "imagePullSecrets": [{"name": "registry"}],
    "podAnnotations": {"example.com/team": "mcp"},
    "nats": {"url": "tls://nats.infra.example.com:4222", "streamReplicas": 5},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "tlsSecretName": "mcp-tls",
        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
    },
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        "dashboard": {"enabled": True, "namespace": "monitoring"},
    },
    "networkPolicy": {"enabled": True},
    "gateway": {
        "forwardOAuthPaths": True,
        "trustedProxies": ["10.0.0.0/8"],
        "requiredScopes": ["mcp"],
        "extraAllowedHosts": ["mcp.internal"],
        "extraAllowedIssuers": ["https://login.microsoftonline.com/0f1e2d3c-0000-4000-8000-000000000000/v2.0"],
        "issuersWithoutTyp": ["https://login.microsoftonline.com/0f1e2d3c-0000-4000-8000-000000000000/v2.0"],
        "extraEnv": [{"name": "GATEWAY_REQUEST_TIMEOUT", "value": "120"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "h2cPort": 8789,
    },
    "worker": {
        "extraEnv": [
            {"name": "ALLOWED_EMAILS", "value": "@example.com"},
            {"name": "API_URL", "value": "https://todo.example.com"},
            {"name": "IMAGE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "image-api", "key": "key"}}},
        ],
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "mcp", "effect": "NoSchedule"}],
    },
    "auth": {
        "scopes": "mcp todo:read",
        "trustedProxies": ["10.0.0.0/8"],
        "apiIdentifier": "https://todo.example.com",
        "machineClients": {
            "value": [
                {
                    "client_id": "ops",
                    "client_secret_sha256": "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg",
                    "grant_types": [],
                    "introspect": True,
                }
            ]
        },
        "extraEnv": [{"name": "AUTH_ACCESS_TOKEN_TTL", "value": "600"}],
    },
}
EXISTING_SECRETS: dict[str, Any] = {
    "auth": {
        "vaultKeys": {"value": "", "existingSecret": "mcp-keys", "existingSecretKey": "vault"},
        "cookieKey": {"value": "", "existingSecret": "mcp-keys", "existingSecretKey": "cookie"},
        "machineClients": {"existingSecret": "mcp-machines"},
        "idp": {
            "preset": "github",
            "clientId": "Iv1.abc",
            "clientSecret": {"existingSecret": "github-oauth", "existingSecretKey": "secret"},
        },
    },
}


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        stack = [(out, copy.deepcopy(layer))]
        while stack:
            into, src = stack.pop()
            for k, v in src.items():
                if isinstance(v, dict) and isinstance(into.get(k), dict):
                    stack.append((into[k], v))
                else:
                    into[k] = v
    return out


VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": merged(BASE),
    "nats-servers": merged(BASE, {"nats": NATS_SERVERS}),
    **{f"preset-{p}": merged(BASE, {"auth": {"idp": {"preset": p, **extra}}}) for p, extra in PRESETS.items()},
    "all-off": merged(BASE, ALL_OFF),
    "all-on": merged(BASE, ALL_ON),
    "existing-secrets": merged(BASE, EXISTING_SECRETS),
    "existing-static-users": merged(
        BASE,
        {"auth": {"idp": {"staticUsers": {"users": [], "existingSecret": "users", "existingSecretKey": "users.json"}}}},
    ),
}
# Values that must not render, and what the error must name.
REJECTED: dict[str, tuple[dict[str, Any], str]] = {
    "replicas-not-a-number": (merged(BASE, {"gateway": {"replicas": "two"}}), "/gateway/replicas"),
    "switch-not-a-boolean": (merged(BASE, {"ingress": {"enabled": "yes"}}), "/ingress/enabled"),
    "port-out-of-range": (merged(BASE, {"worker": {"adminPort": 70000}}), "/worker/adminPort"),
    "unknown-idp-preset": (merged(BASE, {"auth": {"idp": {"preset": "okta"}}}), "/auth/idp/preset"),
    "static-as-preset-name": (merged(BASE, {"auth": {"idp": {"preset": "static"}}}), "/auth/idp/preset"),
    "unknown-key": (merged(BASE, {"gateway": {"replica": 3}}), "replica"),
    "h2c-port-out-of-range": (merged(BASE, {"gateway": {"h2cPort": 70000}}), "/gateway/h2cPort"),
    "public-url-with-path": (merged(BASE, {"publicUrl": "https://mcp.example.com/mcp"}), "/publicUrl"),
    "nats-url-not-nats": (merged(BASE, {"nats": {"url": "http://nats:4222"}}), "/nats/url"),
    "no-nats-url": (merged(BASE, {"nats": {"url": ""}}), "nats.url is required"),
    "no-stream-replicas": (merged(BASE, {"nats": {"streamReplicas": 0}}), "/nats/streamReplicas"),
    # The bundled NATS is gone: its switch and its chart's values are unknown keys now.
    "bundled-nats-switch": (merged(BASE, {"nats": {"enabled": True}}), "enabled"),
    "bundled-nats-values": (merged(BASE, {"nats": {"config": {"jetstream": {"enabled": True}}}}), "config"),
    "no-public-url": (merged(BASE, {"publicUrl": ""}), "publicUrl is required"),
    "no-vault-key": (merged(BASE, {"auth": {"vaultKeys": {"value": ""}}}), "auth.vaultKeys"),
    "short-cookie-key": (merged(BASE, {"auth": {"cookieKey": {"value": "short"}}}), "auth.cookieKey"),
    "worker-grace-shorter-than-drain": (
        merged(BASE, {"worker": {"terminationGracePeriodSeconds": 30}}),
        "worker.terminationGracePeriodSeconds",
    ),
    "oidc-without-issuer": (
        merged(BASE, {"auth": {"idp": {"preset": "oidc", "clientId": "x", "clientSecret": {"value": "y"}}}}),
        "auth.idp.oidc.issuer",
    ),
    "static-users-without-users": (
        merged(BASE, {"auth": {"idp": {"staticUsers": {"users": []}}}}),
        "auth.idp.staticUsers",
    ),
}


# ---------------------------------------------------------------------------------------------
# Rendering


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    if MISSING:
        pytest.fail(MISSING)
    with helm.Chart.load(CHART) as c:
        yield c


def render_raw(chart: Any, values: dict[str, Any]) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


@functools.cache
def _rendered(name: str) -> tuple[list[dict[str, Any]], str]:
    with helm.Chart.load(CHART) as c:
        out = render_raw(c, VALUE_SETS[name])
    objs: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("namespace", NAMESPACE)
                objs.append(doc)
    notes = next((t for p, t in out.items() if p.endswith("NOTES.txt")), "")
    return objs, notes


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, chart: Any) -> tuple[str, list[dict[str, Any]]]:
    return request.param, _rendered(request.param)[0]


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def by_name(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((o for o in of_kind(objs, kind) if o["metadata"]["name"] == name), None)


def ours(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our three Deployments."""
    deps = [
        o
        for o in of_kind(objs, "Deployment")
        if o["metadata"]["labels"].get("app.kubernetes.io/part-of") == "mcp-cluster"
    ]
    assert len(deps) == 3, [d["metadata"]["name"] for d in deps]
    return deps


def crate_of(dep: dict[str, Any]) -> str:
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return BINARIES[container["command"][0]]


def container(dep: dict[str, Any]) -> dict[str, Any]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def env(dep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(dep).get("env", [])}


def env_value(dep: dict[str, Any], name: str) -> str:
    e = env(dep)[name]
    assert "value" in e, f"{name} is not a plain value"
    return str(e["value"])


def deployment(objs: list[dict[str, Any]], crate: str) -> dict[str, Any]:
    (dep,) = [d for d in ours(objs) if crate_of(d) == crate]
    return dep


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels / matchExpressions, or a Service's plain map)."""
    match_labels = (
        selector.get("matchLabels", {}) if ("matchLabels" in selector or "matchExpressions" in selector) else selector
    )
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for ex in selector.get("matchExpressions", []) if "matchExpressions" in selector else []:
        value = labels.get(ex["key"])
        op = ex["operator"]
        if op == "In" and value not in ex["values"]:
            return False
        if op == "NotIn" and value in ex["values"]:
            return False
        if op == "Exists" and ex["key"] not in labels:
            return False
        if op == "DoesNotExist" and ex["key"] in labels:
            return False
    return True


def pod_templates(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"] for o in objs if o["kind"] in ("Deployment", "StatefulSet")]


def declared_ports(template: dict[str, Any]) -> set[Any]:
    ports: set[Any] = set()
    for c in template["spec"]["containers"]:
        for p in c.get("ports", []):
            ports.add(p["containerPort"])
            if "name" in p:
                ports.add(p["name"])
    return ports


# ---------------------------------------------------------------------------------------------
# Sources the chart must agree with


def rust_str_array(text: str, name: str) -> list[str]:
    m = re.search(rf"pub const {name}: &\[&str\] = &\[(.*?)\];", text, flags=re.S)
    assert m, f"{name} not found in {PROTO_AUTH}"
    items = re.findall(r'"([^"]+)"', m.group(1))
    assert items, f"{name} is empty"
    return items


@functools.cache
def public_paths() -> tuple[list[str], list[str]]:
    text = PROTO_AUTH.read_text()
    return rust_str_array(text, "PUBLIC_PATHS"), rust_str_array(text, "PUBLIC_PREFIXES")


@functools.cache
def source_dirs(crate: str) -> tuple[Path, ...]:
    """The crate's src/ and those of the workspace crates it depends on (not dev-dependencies)."""
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["dependencies"]
    local = {name: ROOT / spec["path"] for name, spec in workspace.items() if isinstance(spec, dict) and "path" in spec}
    seen: list[Path] = []
    todo = [ROOT / crate]
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.append(d)
        deps = tomllib.loads((d / "Cargo.toml").read_text()).get("dependencies", {})
        todo += [local[n] for n in deps if n in local]
    return tuple(d / "src" for d in seen)


@functools.cache
def variables_read(crate: str) -> frozenset[str]:
    """Environment variables the binary reads: `const ENV_*: &str = "NAME"` and `env = "NAME"`
    in its sources (test modules excluded)."""
    names: set[str] = set()
    for src in source_dirs(crate):
        for f in src.rglob("*.rs"):
            if f.name == "tests.rs" or "tests" in f.relative_to(src).parts:
                continue
            text = f.read_text()
            names |= set(re.findall(r'const ENV_\w+: &str = "([A-Z][A-Z0-9_]*)"', text))
            names |= set(re.findall(r'\benv = "([A-Z][A-Z0-9_]*)"', text))
    assert names, f"no variables found for {crate}"
    return frozenset(names)


def rust_const(path: Path, pattern: str) -> str:
    m = re.search(pattern, path.read_text())
    assert m, f"{pattern} not found in {path}"
    return m.group(1)


@functools.cache
def upstream_kinds() -> list[str]:
    m = re.search(r"pub const KINDS: \[&str; \d+\] = \[(.*?)\];", UPSTREAM_CONFIG.read_text(), flags=re.S)
    assert m
    return re.findall(r'"([^"]+)"', m.group(1))


@functools.cache
def provider_variables() -> dict[str, str]:
    """Variable → the AUTH_UPSTREAM kind it belongs to (auth-service/src/upstream/config.rs)."""
    kinds = {
        "OIDC": "oidc",
        "WORKOS": "workos",
        "ACCESS": "cloudflare-access",
        "PINGONE": "pingone",
        "ENTRA": "entra",
        "GITHUB": "github",
    }
    out = {}
    for prefix, var in re.findall(
        r'pub const ENV_(OIDC|WORKOS|ACCESS|PINGONE|ENTRA|GITHUB)_\w+: &str = "(\w+)"', UPSTREAM_CONFIG.read_text()
    ):
        out[var] = kinds[prefix]
    assert len(set(out.values())) == len(kinds), out
    return out


# ---------------------------------------------------------------------------------------------
# Lint, render, reject


def test_copies_in_the_chart_are_byte_identical() -> None:
    """Helm reads no file outside the chart: files/ holds copies that must not drift."""
    assert (
        CHART / "files" / "rules.yaml"
    ).read_bytes() == RULES.read_bytes(), "run: cp deploy/prometheus/rules.yaml deploy/helm/mcp-cluster/files/"
    assert (
        CHART / "files" / "mcp-cluster.json"
    ).read_bytes() == DASHBOARD.read_bytes(), "run: cp deploy/grafana/mcp-cluster.json deploy/helm/mcp-cluster/files/"


@pytest.mark.parametrize("name", ["defaults", "all-on", "existing-secrets"])
def test_helm_lint_strict(chart: Any, name: str) -> None:
    report = helm.lint(
        CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, with_subcharts=True, kube_version="v1.30.0"
    )
    problems = report["messages"] + [{"error": e} for e in report["errors"]]  # strict: even info
    assert report["total_charts_linted"] >= 1
    assert not problems, json.dumps(problems, indent=1)


def test_chart_metadata_and_schema(chart: Any) -> None:
    meta = chart.metadata
    assert meta["apiVersion"] == "v2" and meta["name"] == "mcp-cluster"
    workspace_version = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    assert meta["appVersion"] == workspace_version, "appVersion is the binaries' workspace version"
    # No third-party chart in the repository: nothing declared, nothing vendored.
    assert not meta.get("dependencies"), meta.get("dependencies")
    assert not chart.dependencies and not (CHART / "charts").exists(), "the chart vendors no chart (charts/)"
    schema = chart.schema
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    # Every key of values.yaml is described by the schema (the defaults validate).
    chart.validate_schema(chart.values)
    # The presets are the auth-service's AUTH_UPSTREAM kinds, "static" named for what it is.
    presets = schema["properties"]["auth"]["properties"]["idp"]["properties"]["preset"]["enum"]
    assert sorted("static" if p == "static-users" else p for p in presets) == sorted(upstream_kinds())
    assert sorted(presets) == sorted(PRESETS)


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_values_fail_to_render(chart: Any, case: str) -> None:
    values, names = REJECTED[case]
    with pytest.raises(helm.HelmError) as err:
        render_raw(chart, values)
    assert names in str(err.value), str(err.value)


def test_every_value_set_renders(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = rendered
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service"} <= kinds
    assert len(ours(objs)) == 3
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"
    assert not of_kind(objs, "StatefulSet"), "the chart installs no NATS"
    assert all(o["metadata"]["labels"].get("app.kubernetes.io/part-of") == "mcp-cluster" for o in objs), [
        n for o, n in zip(objs, names) if o["metadata"]["labels"].get("app.kubernetes.io/part-of") != "mcp-cluster"
    ]


def test_switches_turn_objects_on_and_off(chart: Any) -> None:
    on, _ = _rendered("all-on")
    off, _ = _rendered("all-off")
    for kind in [
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
        "ServiceAccount",
    ]:
        assert of_kind(on, kind), f"{kind} missing with everything on"
        assert not of_kind(off, kind), f"{kind} rendered with everything off"
    assert [c for c in of_kind(on, "ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]]
    assert not [c for c in of_kind(off, "ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]]
    defaults, _ = _rendered("defaults")
    assert {len(of_kind(defaults, k)) for k in ["HorizontalPodAutoscaler"]} == {2}
    assert (
        len(
            [
                p
                for p in of_kind(defaults, "PodDisruptionBudget")
                if p["metadata"]["labels"].get("app.kubernetes.io/part-of") == "mcp-cluster"
            ]
        )
        == 3
    )
    assert not of_kind(defaults, "ServiceMonitor") and not of_kind(defaults, "NetworkPolicy")


# ---------------------------------------------------------------------------------------------
# Kubernetes schemas


@pytest.fixture(scope="module")
def cached_schemas() -> None:
    """kubernetes-validate rereads the 1.8 MB definitions file per object: read each once."""
    if MISSING:
        pytest.fail(MISSING)
    if not hasattr(kv_utils.schema_contents, "cache_info"):
        kv_utils.schema_contents = functools.cache(kv_utils.schema_contents)


def check_crd(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    meta = obj["metadata"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]) and len(meta["name"]) <= 63
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}, set(obj)
    spec = obj["spec"]
    if obj["kind"] == "ServiceMonitor":
        assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}, set(spec)
        assert spec["selector"]["matchLabels"]
        assert spec["endpoints"] and all(e["port"] and e["path"] == "/metrics" for e in spec["endpoints"])
        for e in spec["endpoints"]:
            assert set(e) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings"}, set(e)
            assert re.fullmatch(r"[0-9]+(ms|s|m|h)", e["interval"]) and re.fullmatch(
                r"[0-9]+(ms|s|m|h)", e["scrapeTimeout"]
            )
    else:
        assert set(spec) == {"groups"}
        assert (
            spec["groups"] == yaml.safe_load(RULES.read_text())["groups"]
        ), "the PrometheusRule holds deploy/prometheus/rules.yaml"


def test_objects_validate_against_kubernetes_schemas(
    rendered: tuple[str, list[dict[str, Any]]], cached_schemas: None
) -> None:
    name, objs = rendered
    failures = []
    for obj in objs:
        if obj["kind"] in ("ServiceMonitor", "PrometheusRule"):
            check_crd(obj)
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                failures.append(f"{obj['kind']}/{obj['metadata']['name']} @ {version}: {path}: {e.message}")
            except kv_utils.SchemaNotFoundError as e:
                failures.append(f"{obj['kind']} {obj['apiVersion']}: no schema ({e.message})")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# The Ingress


def route(ingress: dict[str, Any], path: str) -> str | None:
    """The Service an Ingress sends `path` to: the longest matching path wins, an Exact one
    before a Prefix one of the same length; Prefix matches whole path elements."""
    best: tuple[int, int, str] | None = None
    for rule in ingress["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            pattern, kind = p["path"], p["pathType"]
            if kind == "Exact":
                ok = path == pattern
            else:
                assert kind == "Prefix", kind
                base = pattern.rstrip("/")
                ok = base == "" or path == base or path.startswith(base + "/")
            if ok:
                rank = (len(pattern), 1 if kind == "Exact" else 0, p["backend"]["service"]["name"])
                if best is None or rank[:2] > best[:2]:
                    best = rank
    return best[2] if best else None


def test_ingress_routes_the_oauth_paths_to_the_auth_service(chart: Any) -> None:
    objs, _ = _rendered("all-on")
    (ingress,) = of_kind(objs, "Ingress")
    exact, prefixes = public_paths()
    auth = deployment(objs, "auth-service")["metadata"]["name"]
    gateway = deployment(objs, "gateway")["metadata"]["name"]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "mcp.example.com"
    assert ingress["spec"]["tls"] == [{"hosts": ["mcp.example.com"], "secretName": "mcp-tls"}]
    to_auth = [(p["path"], p["pathType"]) for p in rule["http"]["paths"] if p["backend"]["service"]["name"] == auth]
    # Nothing but proto's paths reaches the auth-service, and all of them do.
    assert sorted(to_auth) == sorted([(p, "Exact") for p in exact] + [(p, "Prefix") for p in prefixes])
    for p in exact:
        assert route(ingress, p) == auth, p
        assert route(ingress, p + "/x") == gateway, f"{p} is an exact path"
    for p in prefixes:
        for suffix in ["", "/", "/tenant", "/a/b"]:
            assert route(ingress, p + suffix) == auth, p + suffix
        assert route(ingress, p + "x") == gateway, "prefixes match whole path elements"
    for p in [
        "/mcp",
        "/sse",
        "/messages",
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource/sse",
        "/",
        "/unknown",
    ]:
        assert route(ingress, p) == gateway, p
    # The backends exist and expose the named port.
    for p in rule["http"]["paths"]:
        svc = by_name(objs, "Service", p["backend"]["service"]["name"])
        assert svc, p
        assert p["backend"]["service"]["port"]["name"] in {sp["name"] for sp in svc["spec"]["ports"]}


def test_gateway_forwarding_is_the_alternative_to_the_ingress(chart: Any) -> None:
    on, _ = _rendered("all-on")
    gw = deployment(on, "gateway")
    auth_svc = by_name(on, "Service", deployment(on, "auth-service")["metadata"]["name"])
    assert auth_svc
    url = env_value(gw, "GATEWAY_AUTH_UPSTREAM")
    assert url == f"http://{auth_svc['metadata']['name']}.{NAMESPACE}.svc:{auth_svc['spec']['ports'][0]['port']}"
    off, _ = _rendered("defaults")
    assert "GATEWAY_AUTH_UPSTREAM" not in env(deployment(off, "gateway"))


def test_the_gateway_can_serve_http2_to_a_proxy() -> None:
    """gateway.h2cPort: GATEWAY_H2C_LISTEN, a container port, a Service port that tells proxies to
    speak HTTP/2 without TLS (appProtocol kubernetes.io/h2c), and the network policy lets the
    ingress controller reach it. Off by default."""
    objs, _ = _rendered("defaults")
    gw = deployment(objs, "gateway")
    assert "GATEWAY_H2C_LISTEN" not in env(gw)
    svc = by_name(objs, "Service", gw["metadata"]["name"])
    assert svc and {p["name"] for p in svc["spec"]["ports"]} == {"http", "admin"}

    objs, _ = _rendered("all-on")
    gw = deployment(objs, "gateway")
    assert env_value(gw, "GATEWAY_H2C_LISTEN") == "0.0.0.0:8789"
    assert {"name": "h2c", "containerPort": 8789, "protocol": "TCP"} in container(gw)["ports"]
    svc = by_name(objs, "Service", gw["metadata"]["name"])
    assert svc
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["h2c"]["appProtocol"] == "kubernetes.io/h2c" and ports["h2c"]["targetPort"] == "h2c"
    assert ports["http"]["appProtocol"] == "http"
    policy = by_name(objs, "NetworkPolicy", gw["metadata"]["name"])
    assert policy
    assert {"port": "h2c", "protocol": "TCP"} in policy["spec"]["ingress"][0]["ports"]


# ---------------------------------------------------------------------------------------------
# What a schema cannot say


def test_containers_are_locked_down(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = rendered
    for dep in ours(objs):
        pod = dep["spec"]["template"]["spec"]
        who = dep["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, who
        assert pod["securityContext"]["runAsUser"] == 65532, who
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", who
        assert pod["automountServiceAccountToken"] is False, who
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532, who
            assert sc["readOnlyRootFilesystem"] is True, who
            assert sc["allowPrivilegeEscalation"] is False, who
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), who
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", who
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], who
            assert c["resources"]["limits"]["memory"], who
            assert c["command"][0] in BINARIES, c["command"]
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{who}: /tmp is an emptyDir"


def test_grace_periods_outlast_the_drains(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = rendered
    cfg = ROOT / "session-worker" / "src" / "config.rs"
    worker_drain_var = rust_const(cfg, r'const ENV_DRAIN_TIMEOUT: &str = "(\w+)"')
    gateway_drain_var = rust_const(ROOT / "gateway" / "src" / "config.rs", r'const ENV_DRAIN_TIMEOUT: &str = "(\w+)"')
    auth_drain = int(
        rust_const(
            ROOT / "auth-service" / "src" / "lib.rs", r"const DRAIN_TIMEOUT: Duration = Duration::from_secs\((\d+)\)"
        )
    )

    def pre_stop(dep: dict[str, Any]) -> int:
        hook = container(dep).get("lifecycle", {}).get("preStop")
        return int(hook["sleep"]["seconds"]) if hook else 0

    worker = deployment(objs, "session-worker")
    drain = int(env_value(worker, worker_drain_var))
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > drain
    # session-worker/src/lib.rs drains in three steps each bounded by the drain timeout (leases
    # given back, actors and stateless requests finished, tasks ended), then leave (2 s) and
    # flush (1 s); all of it after the preStop pause.
    assert grace > pre_stop(worker) + 3 * drain + 3, (grace, pre_stop(worker), drain)
    gw = deployment(objs, "gateway")
    assert gw["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pre_stop(gw) + int(
        env_value(gw, gateway_drain_var)
    )
    auth = deployment(objs, "auth-service")
    assert auth["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pre_stop(auth) + auth_drain


def test_probes_ask_the_admin_listener(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = rendered
    admin_var = {
        "gateway": "GATEWAY_ADMIN_LISTEN",
        "session-worker": "WORKER_ADMIN_LISTEN",
        "auth-service": "AUTH_ADMIN_LISTEN",
    }
    listen_var = {"gateway": "GATEWAY_LISTEN", "auth-service": "AUTH_LISTEN"}
    for dep in ours(objs):
        crate = crate_of(dep)
        c = container(dep)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
            get = c[probe]["httpGet"]
            assert get["path"] == path, (crate, probe)
            port = ports.get(get["port"], get["port"])
            assert port in ports.values(), f"{crate} {probe} port {get['port']} is not declared"
            host, _, admin_port = env_value(dep, admin_var[crate]).rpartition(":")
            assert host == "0.0.0.0" and int(admin_port) == port, f"{crate}: the probe must ask the admin listener"
        if crate in listen_var:
            host, _, port = env_value(dep, listen_var[crate]).rpartition(":")
            assert host == "0.0.0.0" and int(port) == ports["http"]
        else:
            assert set(ports) == {"admin"}, "a worker listens on nothing but its admin port"


def test_every_variable_set_is_read_by_its_binary(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = rendered
    for dep in ours(objs):
        crate = crate_of(dep)
        unknown = sorted(set(env(dep)) - variables_read(crate))
        assert (
            not unknown
        ), f"{crate} reads no {unknown} (grep its sources: {[str(s.relative_to(ROOT)) for s in source_dirs(crate)]})"


def test_nats_url_and_replicas(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Every service connects to `nats.url` exactly as given, with `nats.streamReplicas`."""
    name, objs = rendered
    given = VALUE_SETS[name]["nats"]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["nats"]
    assert defaults["url"] == "", "nats.url has no default: it is required"
    for dep in ours(objs):
        who = dep["metadata"]["name"]
        assert env_value(dep, "NATS_URL") == given["url"], who
        assert int(env_value(dep, "NATS_REPLICAS")) == given.get("streamReplicas", defaults["streamReplicas"]), who


def test_nats_values_for_the_official_chart() -> None:
    """deploy/helm/nats-values.yaml: JetStream (file store on a 10Gi volume, memory store), a
    three-server cluster and a PodDisruptionBudget, in the official chart's values layout
    (nats-io/k8s helm/charts/nats, 1.x and later: config.cluster, config.jetstream, ...)."""
    values = yaml.safe_load(NATS_VALUES.read_text())
    assert isinstance(values, dict), NATS_VALUES
    cfg = values["config"]
    assert cfg["jetstream"]["enabled"] is True
    assert cfg["jetstream"]["fileStore"].get("enabled", True) is True
    assert cfg["jetstream"]["fileStore"]["pvc"].get("enabled", True) is True
    assert cfg["jetstream"]["fileStore"]["pvc"]["size"] == "10Gi"
    assert cfg["jetstream"]["memoryStore"]["enabled"] is True
    assert cfg["cluster"]["enabled"] is True
    assert cfg["cluster"]["replicas"] == 3
    assert values["podDisruptionBudget"]["enabled"] is True
    # The chart's default stream replica count fits that cluster.
    streams = yaml.safe_load((CHART / "values.yaml").read_text())["nats"]["streamReplicas"]
    assert 1 <= streams <= cfg["cluster"]["replicas"]


def test_references_resolve(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = rendered
    templates = pod_templates(objs)
    # Services select pods, on ports those pods declare.
    for svc in of_kind(objs, "Service"):
        sel = svc["spec"].get("selector")
        assert sel, svc["metadata"]["name"]
        pods = [t for t in templates if selects(sel, t["metadata"]["labels"])]
        assert pods, f"Service {svc['metadata']['name']} selects no pod"
        for p in svc["spec"]["ports"]:
            assert all(p.get("targetPort", p["port"]) in declared_ports(t) for t in pods), (svc["metadata"]["name"], p)
    # PDBs and NetworkPolicies select pods; NetworkPolicy ports are declared by them.
    for pdb in of_kind(objs, "PodDisruptionBudget"):
        assert any(selects(pdb["spec"]["selector"], t["metadata"]["labels"]) for t in templates), pdb["metadata"][
            "name"
        ]
    for np in of_kind(objs, "NetworkPolicy"):
        pods = [t for t in templates if selects(np["spec"]["podSelector"], t["metadata"]["labels"])]
        assert pods, np["metadata"]["name"]
        for rule in np["spec"]["ingress"]:
            for p in rule["ports"]:
                assert all(p["port"] in declared_ports(t) for t in pods), (np["metadata"]["name"], p)
            for peer in rule["from"]:
                if set(peer) == {"podSelector"}:  # same namespace: must be pods of this release
                    assert any(selects(peer["podSelector"], t["metadata"]["labels"]) for t in templates), peer
    # HPAs scale Deployments that exist and leave them no replica count to fight over.
    for hpa in of_kind(objs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = by_name(objs, ref["kind"], ref["name"])
        assert target and ref["apiVersion"] == "apps/v1", ref
        assert "replicas" not in target["spec"], f"{ref['name']}: the HPA owns replicas"
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # The ServiceMonitor scrapes the admin port of the three services.
    for sm in of_kind(objs, "ServiceMonitor"):
        picked = [s for s in of_kind(objs, "Service") if selects(sm["spec"]["selector"], s["metadata"]["labels"])]
        assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in picked} == {
            "gateway",
            "session-worker",
            "auth-service",
        }
        assert all("admin" in {p["name"] for p in s["spec"]["ports"]} for s in picked)
    # Secrets referenced exist (made by the chart) or were named by the operator.
    made = {s["metadata"]["name"]: set(s.get("data", {})) for s in of_kind(objs, "Secret")}
    given = json.dumps(VALUE_SETS[name])
    named = set(re.findall(r'"existingSecret": "([^"]+)"', given)) | set(
        re.findall(r'"secretKeyRef": \{"name": "([^"]+)"', given)
    )
    for dep in ours(objs):
        for e in container(dep).get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] in named or ref["key"] in made.get(ref["name"], set()), (dep["metadata"]["name"], e)
        for v in dep["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in v:
                s = v["secret"]
                assert s["secretName"] in named or {i["key"] for i in s["items"]} <= made.get(s["secretName"], set()), v
    for ref in (t["spec"].get("serviceAccountName") for t in templates):
        if ref and ref != "default" and VALUE_SETS[name].get("serviceAccount", {}).get("create", True):
            assert by_name(objs, "ServiceAccount", ref), ref


def test_identity_provider_presets(chart: Any) -> None:
    by_var = provider_variables()
    for preset in PRESETS:
        objs, notes = _rendered(f"preset-{preset}")
        auth = deployment(objs, "auth-service")
        variables = env(auth)
        kind = "static" if preset == "static-users" else preset
        assert env_value(auth, "AUTH_UPSTREAM") == kind
        # Only the chosen provider's variables (the auth-service refuses static users while
        # another provider's are set), and its client id and secret among them.
        chosen = {v for v in variables if v in by_var}
        assert {by_var[v] for v in chosen} <= {kind}, (preset, chosen)
        if preset == "static-users":
            path = env_value(auth, "AUTH_STATIC_USERS_FILE")
            mount = next(m for m in container(auth)["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
            vol = next(v for v in auth["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
            item = next(i for i in vol["secret"]["items"] if i["path"] == path.rpartition("/")[2])
            secret = by_name(objs, "Secret", vol["secret"]["secretName"])
            assert secret, vol
            users = json.loads(base64.b64decode(secret["data"][item["key"]]))
            assert users == {"users": BASE["auth"]["idp"]["staticUsers"]["users"]}
        else:
            wanted = {v for v, k in by_var.items() if k == kind and ("CLIENT_ID" in v or "CLIENT_SECRET" in v)}
            assert wanted and wanted <= chosen, (preset, wanted, chosen)
            secret_var = next(v for v in wanted if "SECRET" in v)
            assert "value" not in variables[secret_var], "the client secret comes from a Secret"
            ref = variables[secret_var]["valueFrom"]["secretKeyRef"]
            secret = by_name(objs, "Secret", ref["name"])
            assert (
                secret
                and base64.b64decode(secret["data"][ref["key"]]).decode() == PRESETS[preset]["clientSecret"]["value"]
            )
            assert "AUTH_STATIC_USERS_FILE" not in variables
            assert f"{BASE['publicUrl']}/callback" in notes, "NOTES name the redirect URI to register"


def test_existing_secrets_replace_the_charts(chart: Any) -> None:
    objs, _ = _rendered("existing-secrets")
    assert not of_kind(objs, "Secret"), "no Secret is made for values that name an existing one"
    auth = env(deployment(objs, "auth-service"))
    assert auth["AUTH_VAULT_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "mcp-keys", "key": "vault"}
    assert auth["COOKIE_ENCRYPTION_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "mcp-keys", "key": "cookie"}
    assert auth["GITHUB_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "github-oauth", "key": "secret"}
    volumes = {v["name"]: v for v in deployment(objs, "auth-service")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["machine-clients"]["secret"]["secretName"] == "mcp-machines"
    objs, _ = _rendered("existing-static-users")
    volumes = {v["name"]: v for v in deployment(objs, "auth-service")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["static-users"]["secret"] == {
        "secretName": "users",
        "items": [{"key": "users.json", "path": "static-users.json"}],
    }
    assert [s["metadata"]["name"] for s in of_kind(objs, "Secret")] == [f"{RELEASE}-mcp-cluster-auth-keys"]


def test_public_url_reaches_every_service(chart: Any) -> None:
    objs, notes = _rendered("all-on")
    url = BASE["publicUrl"]
    gw, auth = deployment(objs, "gateway"), deployment(objs, "auth-service")
    assert env_value(auth, "AUTH_ISSUER_URL") == url
    assert env_value(auth, "RESOURCE_IDENTIFIER") == env_value(gw, "RESOURCE_IDENTIFIER") == f"{url}/mcp"
    assert env_value(gw, "ALLOWED_ISSUERS").split(",")[0] == url, "the gateways accept our issuer's tokens"
    assert env_value(gw, "AUTHORIZATION_SERVERS") == url
    assert env_value(gw, "GATEWAY_ALLOWED_HOSTS").split(",") == ["mcp.example.com", "mcp.internal"]
    assert f"{url}/mcp" in notes and "claude mcp add" in notes


def test_dashboard_and_rules_are_deploys(chart: Any) -> None:
    objs, _ = _rendered("all-on")
    (cm,) = [c for c in of_kind(objs, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert cm["metadata"]["namespace"] == "monitoring"
    (body,) = cm["data"].values()
    assert json.loads(body) == json.loads(DASHBOARD.read_text())
    (rule,) = of_kind(objs, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    assert rule["metadata"]["labels"]["release"] == "prometheus"


OTEL_VARIABLES = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER",
                  "OTEL_TRACES_SAMPLER_ARG", "OTEL_RESOURCE_ATTRIBUTES"}


def test_traces_are_exported_only_when_an_endpoint_is_set() -> None:
    """tracing.endpoint gives every service the OTLP variables under its own service name;
    without it no OTEL_* variable is set (traces off, nothing paid)."""
    on, _ = _rendered("all-on")
    for dep in ours(on):
        vars_ = env(dep)
        assert OTEL_VARIABLES <= set(vars_), (crate_of(dep), sorted(vars_))
        assert env_value(dep, "OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector.monitoring.svc:4318"
        assert env_value(dep, "OTEL_SERVICE_NAME") == crate_of(dep)
        assert env_value(dep, "OTEL_TRACES_SAMPLER") == "always_on"
    default, _ = _rendered("defaults")
    for dep in ours(default):
        assert not [v for v in env(dep) if v.startswith("OTEL_")], crate_of(dep)


@pytest.mark.parametrize("bad", [{"sampler": "sometimes"}, {"samplerArg": "2"}, {"endpoint": "otel:4318"}])
def test_bad_tracing_values_are_refused(chart: Any, bad: dict[str, Any]) -> None:
    values = merged(BASE, {"tracing": bad})
    with pytest.raises(helm.HelmError) as err:
        render_raw(chart, values)
    assert "tracing" in str(err.value), err.value
