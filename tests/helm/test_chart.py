"""Tests of the Helm chart in helm/stormlock.

The chart is rendered and linted by the real Helm v4 engine (helm-python-sdk,
which embeds Helm's Go SDK), every rendered manifest is validated against the
Kubernetes 1.30 OpenAPI schemas in strict mode (kubernetes-validate), and the
rendered stormlockd config.toml is parsed as TOML. No cluster is involved.

Run with tests/helm/run.sh.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

import helm_crd_schemas

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "stormlock"
KUBE_VERSION = "1.30.0"
RELEASE = "locks"
NAMESPACE = "platform"

CI_FILES = sorted(CHART.glob("ci/*-values.yaml"))
# Values every install must give (the chart has no default image).
BASE = {"image": {"repository": "registry.example.com/stormlock"}}
CASES = {"default": BASE} | {p.name.removesuffix("-values.yaml"): yaml.safe_load(p.read_text()) for p in CI_FILES}

HEALTH_SERVICE = "stormlock.v1.LockService"
# The health name stormlockd keeps SERVING whatever its backends.
LIVENESS_SERVICE = "liveness"
SHARED_TYPES = ["redis", "postgres", "mysql", "etcd", "dynamodb"]


# --------------------------------------------------------------------------- helpers


class Rendered:
    """The manifests of one render, parsed, with NOTES.txt kept as text."""

    def __init__(self, files: dict[str, str]):
        self.files = files
        self.notes = ""
        self.docs: list[dict] = []
        for path, text in files.items():
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            self.docs.extend(d for d in yaml.safe_load_all(text) if d)

    def all(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def deployment(self) -> dict:
        return self.one("Deployment")

    @property
    def pod_spec(self) -> dict:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> dict:
        (c,) = [c for c in self.pod_spec["containers"] if c["name"] == "stormlockd"]
        return c

    @property
    def service(self) -> dict:
        """The clients' Service (the API only)."""
        (s,) = [s for s in self.all("Service") if not s["metadata"]["name"].endswith("-metrics")]
        return s

    @property
    def metrics_service(self) -> dict:
        (s,) = [s for s in self.all("Service") if s["metadata"]["name"].endswith("-metrics")]
        return s

    @property
    def config_text(self) -> str:
        return self.one("ConfigMap")["data"]["config.toml"]

    @property
    def config(self) -> dict:
        return tomllib.loads(self.config_text)

    @property
    def test_pod(self) -> dict:
        pods = [p for p in self.all("Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
        assert len(pods) == 1
        return pods[0]

    def volume(self, name: str) -> dict:
        (v,) = [v for v in self.pod_spec["volumes"] if v["name"] == name]
        return v

    def mount(self, name: str) -> dict:
        (m,) = [m for m in self.container["volumeMounts"] if m["name"] == name]
        return m

    def env(self) -> dict[str, dict]:
        return {e["name"]: e for e in self.container.get("env", [])}


@pytest.fixture(scope="session")
def chart():
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def render(chart, values: dict | None = None, name: str = RELEASE) -> Rendered:
    """Renders the chart, and has stormlockd check the rendered config.toml
    (`check-config --offline`): every rendering the chart accepts, the daemon
    must accept too."""
    rendered = Rendered(chart.render(merge(BASE, values or {}), name=name, namespace=NAMESPACE, is_install=True))
    if rendered.all("ConfigMap"):
        daemon_accepts(rendered)
    return rendered


# Stand-ins for the secrets a pod's environment fills in, by backend type.
SECRET_URLS = {"redis": "redis://redis.example:6379", "postgres": "postgres://u:p@db.example/locks",
               "mysql": "mysql://u:p@db.example/locks"}


def daemon_accepts(rendered: Rendered) -> None:
    """Runs `stormlockd check-config --offline` on the rendered config, with
    the container's flags and a stand-in for every ${VAR} it references."""
    result = daemon_check(rendered)
    assert result.returncode == 0, f"stormlockd refuses the rendered config:\n{result.stderr}\n{rendered.config_text}"


def daemon_check(rendered: Rendered) -> subprocess.CompletedProcess:
    """`stormlockd check-config --offline` on the rendered config.toml."""
    daemon = _built_binary("stormlockd")
    assert daemon.is_file(), f"no stormlockd at {daemon}: build it first (cargo build --workspace), " \
                             "or point STORMLOCKD at one"
    text = rendered.config_text
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    backends = tomllib.loads(text).get("backends", {})
    for var in set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", text)):
        if var.endswith("_SHA256"):
            env[var] = "ab" * 32
        elif var.startswith("STORMLOCK_NOTIFY_") and var.endswith("_URL"):
            env[var] = "https://hooks.example.com/services/T0/B0/x"
        elif var.endswith("_URL"):
            (backend,) = [b for b in backends.values() if b.get("url") == "${%s}" % var]
            env[var] = SECRET_URLS[backend["type"]]
            if backend["type"] == "redis" and ("ca_file" in backend or "cert_file" in backend):
                # A private CA or a client certificate is for TLS: the
                # Secret's URL must be rediss://.
                env[var] = env[var].replace("redis://", "rediss://", 1)
        else:
            env[var] = "stand-in-secret"
    args = [a for a in rendered.container["args"] if a == "--insecure"]
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "config.toml"
        path.write_text(text)
        return subprocess.run([str(daemon), *args, "check-config", "--offline", str(path)],
                              capture_output=True, text=True, timeout=60, env=env)


def merge(*layers: dict) -> dict:
    """Deep-merge value layers the way Helm merges -f files (maps merge, the rest replaces)."""
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


@pytest.fixture(scope="session")
def schemaless_chart(tmp_path_factory):
    """A copy of the chart without values.schema.json: what `--skip-schema-validation`
    leaves, so the templates' own checks (fail) must catch bad values."""
    dest = tmp_path_factory.mktemp("chart") / "stormlock"
    shutil.copytree(CHART, dest)
    (dest / "values.schema.json").unlink()
    with helm_python.Chart.load(dest) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def unchecked_chart(tmp_path_factory):
    """A copy of the chart with neither the schema nor the templates' checks
    (stormlock.validate): it renders what the chart refuses, so that a test
    can show that the daemon refuses it too."""
    dest = tmp_path_factory.mktemp("unchecked") / "stormlock"
    shutil.copytree(CHART, dest)
    (dest / "values.schema.json").unlink()
    configmap = dest / "templates" / "configmap.yaml"
    text = configmap.read_text()
    assert text.startswith('{{- include "stormlock.validate" . }}\n')
    configmap.write_text(text.split("\n", 1)[1])
    with helm_python.Chart.load(dest) as loaded:
        yield loaded


def render_error(chart, values: dict) -> str:
    with pytest.raises(helm_python.HelmError) as raised:
        chart.render(merge(BASE, values), name=RELEASE, namespace=NAMESPACE, is_install=True)
    return str(raised.value)


REDIS = {"backends": {"main": {"type": "redis", "urlSecret": {"name": "redis-cred", "key": "url"}}}}
CERT_MANAGER = {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca-issuer"}}}}
# The SHA-256 of a token (what `stormlockd new-token` prints; the token itself never reaches the chart).
TOKEN_SHA256 = hashlib.sha256(b"not-a-real-token-0123456789abcdef").hexdigest()
NO_CLIENT_CERTS = {"tls": {"clientAuth": {"enabled": False}}}
UNAUTHENTICATED = merge(NO_CLIENT_CERTS, {"auth": {"dangerouslyAllowUnauthenticated": True}})


# --------------------------------------------------------------------------- coverage of the ci values


def test_ci_values_cover_every_required_setup():
    types = {n: {b["type"] for b in (v.get("backends") or {}).values() if b} for n, v in CASES.items()}
    cert_manager = {n for n, v in CASES.items() if v.get("tls", {}).get("certManager", {}).get("enabled")}
    for needed in ["embedded", "redis", "postgres", "etcd"]:
        assert any(needed in t for n, t in types.items() if n != "default"), f"no ci values use {needed}"
    assert cert_manager, "no ci values use cert-manager"
    assert set(CASES) - cert_manager - {"default"}, "no ci values use an existing TLS Secret"
    tokens = [t for v in CASES.values() for t in v.get("auth", {}).get("tokens", [])]
    assert any("sha256" in t for t in tokens) and any("sha256Secret" in t for t in tokens), \
        "no ci values use bearer tokens, inline and from a Secret"
    backends = [b for v in CASES.values() for b in (v.get("backends") or {}).values() if b]
    for engine in ("redis", "postgres", "mysql", "etcd"):
        assert any(b["type"] == engine and b.get("tls", {}).get("secretName") for b in backends), \
            f"no ci values verify {engine} with a CA from a Secret"
    # The examples show verified TLS for every SQL backend.
    assert all("tls" in b for b in backends if b["type"] in ("postgres", "mysql"))
    assert any(v.get("openshift") for v in CASES.values()), "no ci values run with OpenShift-assigned ids"
    client_cas = [v["tls"]["certManager"].get("clientCA", {}) for n, v in CASES.items() if n in cert_manager]
    assert any(not ca for ca in client_cas) and any(ca.get("create") is False for ca in client_cas), \
        "no ci values use the dedicated client CA, created and from an existing key pair"


# --------------------------------------------------------------------------- render, lint, validate


@pytest.mark.parametrize("case", CASES)
def test_lint_strict_is_clean(case):
    report = helm_python.lint(CHART, CASES[case], strict=True, namespace=NAMESPACE, kube_version="v" + KUBE_VERSION)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


@pytest.mark.parametrize("case", CASES)
def test_manifests_validate_against_kubernetes_1_30(chart, case):
    rendered = render(chart, CASES[case])
    assert rendered.docs
    for doc in rendered.docs:
        custom = helm_crd_schemas.BY_KIND.get((doc["apiVersion"], doc["kind"]))
        if custom is not None:
            jsonschema.validate(doc, custom)
            continue
        # Raises on any schema violation, including unknown fields (strict);
        # SchemaNotFoundError would mean an unexpected custom kind.
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_kubernetes_validate_cli_accepts_the_built_in_manifests(chart):
    """The same check through kubernetes-validate's command line, as CI systems run it."""
    builtin = [d for case in CASES for d in render(chart, CASES[case]).docs
               if (d["apiVersion"], d["kind"]) not in helm_crd_schemas.BY_KIND]
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBE_VERSION, "-"],
        input=yaml.safe_dump_all(builtin), capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed ") == len(builtin)


def test_kubernetes_validate_rejects_an_unknown_field():
    """Guards the validation tests above against passing vacuously."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "i", "livenessProbes": {}}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)
    cert = {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "c"},
            "spec": {"secretName": "s", "issuerRef": {"name": "i"}, "dnsName": ["x"]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cert, helm_crd_schemas.CERTIFICATE)


@pytest.mark.parametrize("case", CASES)
def test_config_toml_follows_the_daemon_contract(chart, case):
    rendered = render(chart, CASES[case])
    cfg = rendered.config
    ports = rendered.container["ports"]
    port = {p["name"]: p["containerPort"] for p in ports}
    assert cfg["listen"] == f"0.0.0.0:{port['grpc']}"
    assert cfg["metrics_listen"] == f"0.0.0.0:{port['metrics']}"
    assert cfg["health_listen"] == f"0.0.0.0:{port['health']}"
    assert cfg["data_dir"] == "/var/lib/stormlock"
    assert rendered.mount("data")["mountPath"] == cfg["data_dir"]
    assert set(cfg) <= {"listen", "metrics_listen", "health_listen", "data_dir", "shutdown_grace", "tls", "auth",
                        "defaults", "backends", "resources"}, "only keys of the daemon's contract"
    assert set(cfg["defaults"]) == {"ttl", "max_ttl", "backend", "backend_timeout"}
    assert cfg["defaults"]["backend"] in cfg["backends"]
    assert set(cfg["auth"]) <= {"admins", "tokens", "default", "identity", "rules"}
    for token in cfg["auth"].get("tokens", []):
        assert set(token) == {"principal", "sha256"}
        assert re.fullmatch(r"[0-9a-f]{64}|\$\{[A-Z0-9_]+\}", token["sha256"]), token
    for rule in cfg.get("resources", []):
        assert set(rule) <= {"match", "backend", "ttl", "max_ttl"}
        assert rule.get("backend", cfg["defaults"]["backend"]) in cfg["backends"]
    allowed = {
        "embedded": {"path"}, "memory": set(), "redis": {"url", "prefix", "connect_timeout", "ca_file"},
        "postgres": {"url", "table", "create_table", "pool_size", "connect_timeout", "tls", "ca_file"},
        "mysql": {"url", "table", "create_table", "pool_size", "connect_timeout", "tls", "ca_file"},
        "etcd": {"endpoints", "username", "password", "ca_file", "cert_file", "key_file", "prefix", "connect_timeout"},
        "dynamodb": {"table", "region", "endpoint", "create_table", "connect_timeout"},
    }
    for name, backend in cfg["backends"].items():
        assert set(backend) - {"type"} <= allowed[backend["type"]], name
    # The daemon reads the file the container is told to read.
    args = rendered.container["args"]
    assert args[args.index("--config") + 1] == rendered.mount("config")["mountPath"] == "/etc/stormlock/config.toml"
    assert rendered.mount("config")["subPath"] == "config.toml"


def test_default_config_values(chart):
    cfg = render(chart).config
    assert cfg["backends"] == {"main": {"type": "embedded", "path": "locks.redb"}}
    assert cfg["defaults"] == {"ttl": "1h", "max_ttl": "30d", "backend": "main", "backend_timeout": "2s"}
    assert cfg["tls"] == {"cert": "/etc/stormlock/tls/tls.crt", "key": "/etc/stormlock/tls/tls.key",
                          "client_ca": "/etc/stormlock/client-ca/ca.crt"}
    assert cfg["auth"] == {"admins": [], "default": "allow", "identity": "cn"}
    assert cfg["shutdown_grace"] == "10s"


def test_auth_settings_and_shutdown_grace_have_values_of_their_own(chart):
    rule = {"principals": ["team-a"], "resources": ["team-a/**"], "actions": ["acquire", "release", "renew"]}
    deny = {"principals": ["*"], "resources": ["secret/**"], "actions": ["*"], "effect": "deny"}
    rendered = render(chart, {"config": {"auth": {"default": "deny", "identity": "uri_san", "rules": [rule, deny]},
                                         "shutdownGraceSeconds": 20},
                              "terminationGracePeriodSeconds": 40})
    auth = rendered.config["auth"]
    assert (auth["default"], auth["identity"]) == ("deny", "uri_san")
    assert auth["rules"] == [rule, deny]
    assert rendered.config["shutdown_grace"] == "20s"
    message = render_error(chart, {"config": {"shutdownGraceSeconds": 30}})
    assert "plus config.shutdownGraceSeconds (30)" in message


@pytest.mark.parametrize("extra", ["[auth]\ndefault = \"deny\"\n", "shutdown_grace = \"30s\"\n"])
@pytest.mark.parametrize("which", ["chart", "schemaless_chart"])
def test_extra_toml_cannot_set_auth_or_top_level_keys(request, which, extra):
    message = render_error(request.getfixturevalue(which), {"config": {"extraToml": extra}})
    assert "config.extraToml cannot set [auth] or shutdown_grace" in message


def test_rules_need_authentication(chart):
    rule = {"principals": ["*"], "resources": ["**"], "actions": ["read"]}
    message = render_error(chart, merge(UNAUTHENTICATED, {"config": {"auth": {"rules": [rule]}}}))
    assert "config.auth.rules is set, but nothing authenticates callers" in message


def test_extra_toml_is_appended(chart):
    extra = '[[resources]]\nmatch = "ci/**"\nttl = "10m"\n'
    rendered = render(chart, {"config": {"extraToml": extra}})
    assert rendered.config["resources"] == [{"match": "ci/**", "ttl": "10m"}]
    assert rendered.config["backends"] == render(chart).config["backends"]


def test_reservation_limits_go_through_extra_toml(chart):
    extra = '[reservations]\nmax_ahead = "30d"\nmax_length = "3d"\n'
    rendered = render(chart, {"config": {"extraToml": extra}})
    assert rendered.config["reservations"] == {"max_ahead": "30d", "max_length": "3d"}
    assert "reservations: start at most 30d ahead, last at most 3d" in daemon_check(rendered).stdout


def test_config_values_reach_the_toml(chart):
    values = {
        "config": {
            "auth": {"admins": ["ops-admin", 'odd "quoted" \\ <name> &co']},
            "defaults": {"ttl": "30m", "maxTtl": "7d", "backend": "main", "backendTimeout": "3s"},
            "resources": [{"match": "prod/*", "ttl": "4h", "maxTtl": "1d"}],
        },
        "backends": {"main": {"type": "embedded", "path": "other.redb"}},
        "bindAddress": "[::]",
    }
    cfg = render(chart, values).config
    assert cfg["auth"]["admins"] == ["ops-admin", 'odd "quoted" \\ <name> &co']
    assert cfg["defaults"] == {"ttl": "30m", "max_ttl": "7d", "backend": "main", "backend_timeout": "3s"}
    assert cfg["resources"] == [{"match": "prod/*", "ttl": "4h", "max_ttl": "1d"}]
    assert cfg["backends"]["main"]["path"] == "other.redb"
    assert cfg["listen"] == "[::]:7466"


# --------------------------------------------------------------------------- probes, ports


@pytest.mark.parametrize("case", CASES)
def test_probes_use_grpc_on_the_health_port(chart, case):
    rendered = render(chart, CASES[case])
    c = rendered.container
    health_port = {p["name"]: p["containerPort"] for p in c["ports"]}["health"]
    assert rendered.config["health_listen"].endswith(f":{health_port}")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert set(c[probe]) >= {"grpc"} and "httpGet" not in c[probe] and "exec" not in c[probe]
        assert c[probe]["grpc"]["port"] == health_port
    # Liveness must not depend on the backend; readiness must. The daemon's
    # overall status ("") follows the backends too, so liveness uses the
    # name that only reflects the process.
    assert c["livenessProbe"]["grpc"]["service"] == LIVENESS_SERVICE
    assert c["startupProbe"]["grpc"]["service"] == LIVENESS_SERVICE
    assert c["readinessProbe"]["grpc"]["service"] == HEALTH_SERVICE


def test_liveness_name_is_the_one_the_daemon_keeps_serving():
    server = (ROOT / "daemon" / "server.rs").read_text()
    assert f'LIVENESS_SERVICE: &str = "{LIVENESS_SERVICE}";' in server


def test_probe_port_follows_the_health_port_value(chart):
    rendered = render(chart, {"containerPorts": {"grpc": 8443, "metrics": 9090, "health": 9000}})
    c = rendered.container
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 8443, "metrics": 9090, "health": 9000}
    assert c["readinessProbe"]["grpc"]["port"] == c["livenessProbe"]["grpc"]["port"] == 9000
    cfg = rendered.config
    assert (cfg["listen"], cfg["metrics_listen"], cfg["health_listen"]) == ("0.0.0.0:8443", "0.0.0.0:9090", "0.0.0.0:9000")


def test_probes_can_be_disabled(chart):
    c = render(chart, {"livenessProbe": {"enabled": False}, "startupProbe": {"enabled": False}}).container
    assert "livenessProbe" not in c and "startupProbe" not in c and "readinessProbe" in c


def test_the_client_service_exposes_only_the_api(chart):
    rendered = render(chart, {"service": {"port": 443, "metricsPort": 9100}})
    ports = {p["name"]: p for p in rendered.service["spec"]["ports"]}
    assert set(ports) == {"grpc"}, "metrics and health stay off the clients' Service"
    # gRPC inside TLS: a mesh must treat it as TLS, not parse it as HTTP/2.
    assert (ports["grpc"]["port"], ports["grpc"]["targetPort"], ports["grpc"]["appProtocol"]) == (443, "grpc", "tls")
    metrics = rendered.metrics_service
    assert metrics["spec"]["type"] == "ClusterIP"
    (port,) = metrics["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http-metrics", 9100, "metrics")
    container_ports = {p["name"] for p in rendered.container["ports"]}
    assert {ports["grpc"]["targetPort"], port["targetPort"]} <= container_ports
    for service in rendered.all("Service"):
        assert service["spec"]["selector"] == rendered.deployment["spec"]["selector"]["matchLabels"]
    plaintext = render(chart, CASES["insecure"]).service["spec"]["ports"][0]
    assert plaintext["appProtocol"] == "grpc"
    # Even a LoadBalancer keeps metrics inside the cluster.
    exposed = render(chart, {"service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/8"]}})
    assert {p["name"] for p in exposed.service["spec"]["ports"]} == {"grpc"}
    assert exposed.service["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    assert exposed.metrics_service["spec"]["type"] == "ClusterIP"


@pytest.mark.parametrize("values, words", [
    ({"service": {"type": "LoadBalancer"}}, "service.loadBalancerSourceRanges"),
    ({"service": {"type": "NodePort"}}, "NodePort cannot be limited by source"),
])
@pytest.mark.parametrize("which", ["chart", "schemaless_chart"])
def test_an_exposed_service_needs_source_ranges_or_the_loud_value(request, which, values, words):
    message = render_error(request.getfixturevalue(which), values)
    assert words in message and "service.dangerouslyAllowAnySource: true" in message
    opted_out = render(request.getfixturevalue(which), merge(values, {"service": {"dangerouslyAllowAnySource": True}}))
    assert opted_out.service["spec"]["type"] == values["service"]["type"]


def test_pods_keep_serving_while_endpoints_drain(chart):
    rendered = render(chart)
    assert rendered.container["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert rendered.pod_spec["terminationGracePeriodSeconds"] > 5 + 10
    assert "lifecycle" not in render(chart, {"lifecycle": {"preStopDelaySeconds": 0}}).container
    message = render_error(chart, {"lifecycle": {"preStopDelaySeconds": 25}})
    assert "terminationGracePeriodSeconds (30) must exceed lifecycle.preStopDelaySeconds (25)" in message
    assert "at least 40" in message
    longer = render(chart, {"lifecycle": {"preStopDelaySeconds": 25}, "terminationGracePeriodSeconds": 40})
    assert longer.container["lifecycle"]["preStop"]["sleep"]["seconds"] == 25


# --------------------------------------------------------------------------- security context


@pytest.mark.parametrize("case", CASES)
def test_restricted_security_context(chart, case):
    rendered = render(chart, CASES[case])
    pod = rendered.pod_spec
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", "assigned") != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"] + [rendered.test_pod["spec"]["containers"][0]]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "add" not in sc["capabilities"]
        assert sc.get("privileged", False) is False
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # Read-only root: /tmp is an emptyDir.
    assert rendered.mount("tmp")["mountPath"] == "/tmp"
    assert "emptyDir" in rendered.volume("tmp")
    assert "resources" in rendered.container and rendered.container["resources"]["limits"]["memory"]


def _restricted_violations(spec: dict) -> list[str]:
    """What the Kubernetes 1.30 `restricted` Pod Security Standard (baseline
    included) refuses in a pod spec, check by check as the admission
    controller applies them; [] when it passes."""
    out = []
    pod = spec.get("securityContext", {})
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(key)
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volumes:
            out.append(f"volume {volume['name']}: {kinds - allowed_volumes}")
    if pod.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    for c in containers:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities added")
        if not sc.get("runAsNonRoot", pod.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{name}: procMount")
    return out


def test_restricted_pod_security_check_is_not_vacuous():
    base = {"containers": [{"name": "c", "securityContext": {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"}}}]}
    assert _restricted_violations(base) == []
    for broken in ({"hostNetwork": True}, {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]},
                   {"containers": [{"name": "c", "securityContext": {"runAsNonRoot": True}}]}):
        assert _restricted_violations(merge(base, broken)), broken


@pytest.mark.parametrize("case", CASES)
def test_every_pod_passes_restricted_pod_security(chart, case):
    rendered = render(chart, CASES[case])
    for spec in (rendered.pod_spec, rendered.test_pod["spec"]):
        assert _restricted_violations(spec) == []


ID_KEYS = {"runAsUser", "runAsGroup", "fsGroup"}


@pytest.mark.parametrize("case", ["default", "etcd", "redis", "tokens"])
def test_openshift_leaves_the_ids_to_the_platform(chart, case):
    """OpenShift's restricted-v2 SCC assigns the user, group and fsGroup from
    the namespace's range and refuses pods that pin others; everything else of
    the restricted standard stays."""
    pinned = render(chart, CASES[case])
    assert pinned.pod_spec["securityContext"]["runAsUser"] == 65532
    assert pinned.test_pod["spec"]["securityContext"]["fsGroup"] == 65532
    rendered = render(chart, merge(CASES[case], {"openshift": True}))
    for spec in (rendered.pod_spec, rendered.test_pod["spec"]):
        assert not ID_KEYS & set(spec["securityContext"]), spec["securityContext"]
        for c in spec["containers"]:
            assert not ID_KEYS & set(c["securityContext"]), c["securityContext"]
        assert _restricted_violations(spec) == []
        assert spec["securityContext"]["runAsNonRoot"] is True
    # Only the ids go: the rest of both contexts is as with pinned ids.
    for key in ("podSecurityContext", "securityContext"):
        want = {k: v for k, v in chart.values[key].items() if k not in ID_KEYS}
        got = rendered.pod_spec["securityContext"] if key == "podSecurityContext" else rendered.container["securityContext"]
        assert got == want
    assert rendered.pod_spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"


# --------------------------------------------------------------------------- single writer vs scale-out


@pytest.mark.parametrize("values, what", [
    ({"replicaCount": 2}, "/replicaCount"),
    ({"autoscaling": {"enabled": True}}, "/autoscaling/enabled"),
    ({"replicaCount": 3, "backends": {"main": {"type": "memory"}}}, "/replicaCount"),
    (merge(REDIS, {"replicaCount": 2, "backends": {"local": {"type": "embedded"}}}), "/replicaCount"),
])
def test_schema_refuses_more_than_one_replica_with_a_single_writer_backend(chart, values, what):
    message = render_error(chart, values)
    assert "schema" in message and what in message


@pytest.mark.parametrize("values, expected", [
    ({"replicaCount": 2}, "replicaCount is 2, but backend main (embedded) is single-writer"),
    ({"autoscaling": {"enabled": True}}, "autoscaling.enabled is true, but backend main (embedded) is single-writer"),
    ({"replicaCount": 2, "backends": {"main": {"type": "memory"}}}, "backend main (memory) is single-writer"),
])
def test_templates_refuse_more_than_one_replica_with_a_single_writer_backend(schemaless_chart, values, expected):
    message = render_error(schemaless_chart, values)
    assert expected in message
    assert "exactly one replica" in message


def test_embedded_runs_one_replica_with_recreate(chart):
    d = render(chart).deployment
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("backend_type", SHARED_TYPES)
def test_shared_backends_scale_out_with_rolling_updates(chart, backend_type):
    backend = {
        "redis": {"type": "redis", "url": "rediss://redis.db:6379/0"},
        "postgres": {"type": "postgres", "url": "postgres://stormlock@pg.db/stormlock"},
        "mysql": {"type": "mysql", "url": "mysql://stormlock@mysql.db/stormlock"},
        "etcd": {"type": "etcd", "endpoints": ["https://etcd:2379"], "tls": {"secretName": "etcd-client"}},
        "dynamodb": {"type": "dynamodb", "table": "locks", "region": "eu-west-1"},
    }[backend_type]
    rendered = render(chart, {"replicaCount": 4, "backends": {"main": backend}})
    spec = rendered.deployment["spec"]
    assert spec["replicas"] == 4
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": 0}
    assert rendered.all("PersistentVolumeClaim") == []
    assert "persistentVolumeClaim" not in rendered.volume("data")
    spread = spec["template"]["spec"]["topologySpreadConstraints"]
    assert spread[0]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]


def test_autoscaling_with_a_shared_backend(chart):
    rendered = render(chart, merge(REDIS, {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 9,
                                                           "targetMemoryUtilizationPercentage": 80}}))
    assert "replicas" not in rendered.deployment["spec"]
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": rendered.deployment["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}


def test_autoscaling_needs_a_target(chart, schemaless_chart):
    values = merge(REDIS, {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}})
    assert "schema" in render_error(chart, values)
    assert "needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" in render_error(schemaless_chart, values)
    bad_range = merge(REDIS, {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}})
    assert "maxReplicas (2) is below autoscaling.minReplicas (5)" in render_error(chart, bad_range)


def test_hpa_and_replicas_off_by_default(chart):
    rendered = render(chart)
    assert rendered.all("HorizontalPodAutoscaler") == []


# --------------------------------------------------------------------------- persistence


def test_pvc_for_embedded_only(chart):
    rendered = render(chart)
    pvc = rendered.one("PersistentVolumeClaim")
    assert rendered.volume("data")["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOncePod"], "one writer by construction"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "storageClassName" not in pvc["spec"]
    for case in ("redis", "postgres", "etcd", "dynamodb", "insecure"):
        other = render(chart, CASES[case])
        assert other.all("PersistentVolumeClaim") == [], case
        assert other.volume("data") == {"name": "data", "emptyDir": {}}, case


def test_pvc_settings(chart):
    rendered = render(chart, {"persistence": {"storageClass": "fast", "size": "5Gi", "keepOnUninstall": False,
                                              "accessModes": ["ReadWriteOnce"]}})
    pvc = rendered.one("PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] == "fast"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "helm.sh/resource-policy" not in (pvc["metadata"].get("annotations") or {})
    assert render(chart, {"persistence": {"storageClass": "-"}}).one("PersistentVolumeClaim")["spec"]["storageClassName"] == ""


def test_existing_claim_and_disabled_persistence(chart):
    rendered = render(chart, {"persistence": {"existingClaim": "my-locks"}})
    assert rendered.all("PersistentVolumeClaim") == []
    assert rendered.volume("data")["persistentVolumeClaim"]["claimName"] == "my-locks"
    message = render_error(chart, {"persistence": {"enabled": False}})
    assert "persistence.acceptLocksLostOnRestart: true" in message
    rendered = render(chart, {"persistence": {"enabled": False, "acceptLocksLostOnRestart": True}})
    assert rendered.all("PersistentVolumeClaim") == []
    assert rendered.volume("data") == {"name": "data", "emptyDir": {}}
    assert "lost whenever the pod is replaced" in rendered.notes


@pytest.mark.parametrize("mode", ["ReadWriteMany", "ReadOnlyMany"])
def test_a_shared_lock_file_is_refused(request, mode):
    message = render_error(request.getfixturevalue("schemaless_chart"), {"persistence": {"accessModes": [mode]}})
    assert f"persistence.accessModes has {mode}" in message
    assert "/persistence/accessModes" in render_error(request.getfixturevalue("chart"),
                                                      {"persistence": {"accessModes": [mode]}})


@pytest.mark.parametrize("which", ["chart", "schemaless_chart"])
def test_dynamodb_needs_a_region(request, which):
    chart = request.getfixturevalue(which)
    dynamo = {"backends": {"main": {"type": "dynamodb", "table": "locks"}}, "replicaCount": 2}
    assert "backends.main (dynamodb) needs region" in render_error(chart, dynamo)
    from_env = merge(dynamo, {"extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"}]})
    assert render(chart, from_env).config["backends"]["main"]["table"] == "locks"
    assert render(chart, merge(dynamo, {"backends": {"main": {"region": "eu-west-1"}}})).config["backends"]["main"]["region"] == "eu-west-1"


def test_cpu_autoscaling_needs_a_real_cpu_request(chart):
    scaled = merge(REDIS, {"autoscaling": {"enabled": True}})
    assert render(chart, scaled).one("HorizontalPodAutoscaler")
    for request in ("50m", "0.05"):
        message = render_error(chart, merge(scaled, {"resources": {"requests": {"cpu": request}}}))
        assert f"resources.requests.cpu is {request}" in message
    memory_only = merge(scaled, {"resources": {"requests": {"cpu": "50m"}},
                                 "autoscaling": {"targetCPUUtilizationPercentage": None,
                                                 "targetMemoryUtilizationPercentage": 80}})
    assert render(chart, memory_only).one("HorizontalPodAutoscaler")


@pytest.mark.parametrize("which", ["chart", "schemaless_chart"])
def test_the_image_must_be_named(request, which):
    """No public image is published: a default name could be someone else's."""
    chart = request.getfixturevalue(which)
    with pytest.raises(helm_python.HelmError) as raised:
        chart.render({}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    message = str(raised.value)
    if which == "chart":
        assert "/image/repository" in message, message
    else:
        assert "image.repository is empty" in message and "Dockerfile" in message
    pinned = render(chart, {"image": {"repository": "r.example/s", "digest": "sha256:" + "a" * 64}})
    assert pinned.container["image"] == "r.example/s@sha256:" + "a" * 64


def test_memory_backend_warns(chart):
    rendered = render(chart, {"backends": {"main": {"type": "memory"}}})
    assert 'backend main is "memory"' in rendered.notes


# --------------------------------------------------------------------------- upgrades that move the embedded store


class _FakeCluster:
    """A Kubernetes API server on loopback that knows a few objects, for
    rendering with `lookup` (helm_python.Config.render, as `helm upgrade`
    renders): discovery for v1 and apps/v1, GET and LIST of Deployments and
    ConfigMaps in one namespace, 404 for anything else."""

    RESOURCES = {"v1": [("configmaps", "ConfigMap")], "apps/v1": [("deployments", "Deployment")]}

    def __init__(self, objects: list[dict]):
        self.objects = objects
        self.requests: list[str] = []

    def _answer(self, path: str) -> tuple[int, dict]:
        for group_version, resources in self.RESOURCES.items():
            prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
            if path == prefix:
                return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                             "resources": [{"name": plural, "singularName": kind.lower(), "namespaced": True,
                                            "kind": kind, "verbs": ["get", "list"]} for plural, kind in resources]}
            for plural, kind in resources:
                base = f"{prefix}/namespaces/{NAMESPACE}/{plural}"
                matching = [o for o in self.objects if o["kind"] == kind]
                if path == base:
                    return 200, {"kind": f"{kind}List", "apiVersion": group_version,
                                 "metadata": {"resourceVersion": "1"}, "items": matching}
                for o in matching:
                    if path == f"{base}/{o['metadata']['name']}":
                        return 200, o
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}

    def __enter__(self) -> "_FakeCluster":
        import http.server
        import threading

        cluster = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                cluster.requests.append(path)
                code, body = cluster._answer(path)
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        kubeconfig = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.server.server_address[1]}"}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NAMESPACE}}],
        }
        self.config = helm_python.Config(kubeconfig_content=yaml.safe_dump(kubeconfig), namespace=NAMESPACE)
        return self

    def upgrade(self, chart, values: dict, name: str = RELEASE) -> Rendered:
        """Renders an upgrade of release NAME as `helm upgrade` does, with
        lookup answered by this cluster; checks the config with the daemon."""
        rendered = Rendered(self.config.render(chart, merge(BASE, values), name=name, namespace=NAMESPACE,
                                               is_upgrade=True))
        daemon_accepts(rendered)
        return rendered

    def upgrade_error(self, chart, values: dict, name: str = RELEASE) -> str:
        with pytest.raises(helm_python.HelmError) as raised:
            self.config.render(chart, merge(BASE, values), name=name, namespace=NAMESPACE, is_upgrade=True)
        return str(raised.value)

    def __exit__(self, *exc) -> None:
        self.config.close()
        self.server.shutdown()
        self.server.server_close()


def _installed(chart, values: dict, name: str = RELEASE) -> list[dict]:
    """The Deployment and ConfigMap of a release installed with VALUES, as
    the cluster holds them (Helm adds its release annotations)."""
    rendered = render(chart, values, name=name)
    objects = []
    for doc in (rendered.deployment, rendered.one("ConfigMap")):
        doc = copy.deepcopy(doc)
        doc["metadata"].setdefault("annotations", {}).update(
            {"meta.helm.sh/release-name": name, "meta.helm.sh/release-namespace": NAMESPACE})
        objects.append(doc)
    return objects


# What an upgrade changes, and the sentence the refusal names it with.
STORE_MOVES = {
    "claim": ({"persistence": {"existingClaim": "new-locks"}},
              f"the data dir moves from claim {RELEASE}-stormlock-data to claim new-locks"),
    "path": ({"backends": {"main": {"type": "embedded", "path": "other.redb"}}},
             "backend main's file moves from locks.redb to other.redb"),
    "fullname": ({"fullnameOverride": "locksvc"},
                 f"the data dir moves from claim {RELEASE}-stormlock-data to claim locksvc-data"),
    "no persistence": ({"persistence": {"enabled": False, "acceptLocksLostOnRestart": True}},
                       f"the data dir moves from claim {RELEASE}-stormlock-data to an emptyDir"),
    "shared backend": ({"backends": {"main": {"type": "redis", "url": "rediss://redis.db:6379/0"}}},
                       f"no backend is embedded any more, so claim {RELEASE}-stormlock-data is no longer mounted"),
}


@pytest.mark.parametrize("move", STORE_MOVES)
def test_an_upgrade_that_moves_the_embedded_store_is_refused(chart, move):
    """`helm upgrade` renders with lookup: the chart reads the running
    Deployment's data claim and its ConfigMap's embedded files, and refuses
    an upgrade that would start the store empty, unless told to."""
    values, sentence = STORE_MOVES[move]
    with _FakeCluster(_installed(chart, {})) as cluster:
        message = cluster.upgrade_error(chart, values)
        assert "This upgrade would move the embedded backend's store" in message
        assert sentence in message
        assert "fence tokens would restart from 1" in message
        assert "persistence.acceptLocksLostOnChange: true" in message
        assert f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments" in cluster.requests
        accepted = cluster.upgrade(chart, merge(values, {"persistence": {"acceptLocksLostOnChange": True}}))
        notes = _flat(accepted.notes)
        assert "WARNING: THIS UPGRADE MOVED THE EMBEDDED STORE (persistence.acceptLocksLostOnChange=true): - " + sentence in notes
        assert "Remove persistence.acceptLocksLostOnChange from the values now." in notes


def test_an_upgrade_that_keeps_the_store_passes(chart):
    installed = _installed(chart, CASES["embedded"])
    with _FakeCluster(installed) as cluster:
        same = cluster.upgrade(chart, merge(CASES["embedded"], {"config": {"defaults": {"ttl": "2h"}}}))
        assert same.config["defaults"]["ttl"] == "2h"
        assert "EMBEDDED STORE" not in same.notes
        # A second embedded backend with a file of its own moves nothing.
        more = cluster.upgrade(chart, merge(CASES["embedded"], {"backends": {"extra": {"type": "embedded", "path": "extra.redb"}}}))
        assert set(more.config["backends"]) == {"main", "extra"}
        # The ConfigMap was read through the Deployment's config volume.
        assert f"/api/v1/namespaces/{NAMESPACE}/configmaps/{RELEASE}-stormlock" in cluster.requests


def test_a_moved_path_is_found_in_the_running_config(chart):
    """Each backend keeps its file: swapping two backends' files would give
    their resources the other's fence counters; renaming a backend that keeps
    its file moves nothing."""
    two = {"main": {"type": "embedded", "path": "a.redb"}, "other": {"type": "embedded", "path": "b.redb"}}
    with _FakeCluster(_installed(chart, {"backends": two})) as cluster:
        swapped = {"backends": {"main": {"type": "embedded", "path": "b.redb"}, "other": {"type": "embedded", "path": "a.redb"}}}
        message = cluster.upgrade_error(chart, swapped)
        assert "backend main's file moves from a.redb to b.redb; backend other's file moves from b.redb to a.redb" in message
        dropped = cluster.upgrade_error(chart, {"backends": {"main": {"type": "embedded", "path": "a.redb"}}})
        assert "file b.redb (backend other) is no longer used: the embedded backends now use a.redb" in dropped
    with _FakeCluster(_installed(chart, {"backends": {"main": {"type": "embedded", "path": "a.redb"}}})) as cluster:
        renamed = {"backends": {"main": None, "store": {"type": "embedded", "path": "a.redb"}},
                   "config": {"defaults": {"backend": "store"}}}
        assert set(cluster.upgrade(chart, renamed).config["backends"]) == {"store"}


def test_other_releases_and_shared_backends_are_not_compared(chart):
    """Only this release's Deployment counts (Helm's release annotations);
    a release that kept no store on a claim has nothing to lose."""
    with _FakeCluster(_installed(chart, {}, name="other")) as cluster:
        assert cluster.upgrade(chart, {"persistence": {"existingClaim": "new-locks"}}).all("Deployment")
    with _FakeCluster(_installed(chart, merge(REDIS, {"replicaCount": 2}))) as cluster:
        assert cluster.upgrade(chart, {"persistence": {"existingClaim": "new-locks"}}).all("Deployment")


def test_helm_template_cannot_see_the_cluster(chart):
    """Offline (helm template, client-side dry runs) lookup finds nothing:
    no refusal is possible, and the flag left on is pointed out."""
    assert render(chart, {"persistence": {"existingClaim": "new-locks"}}).all("Deployment")
    notes = _flat(render(chart, {"persistence": {"acceptLocksLostOnChange": True}}).notes)
    assert "persistence.acceptLocksLostOnChange is true: a later upgrade may move the embedded store" in notes


# --------------------------------------------------------------------------- credentials


SECRET_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@pytest.mark.parametrize("case", CASES)
def test_every_config_reference_is_set_from_a_secret(chart, case):
    rendered = render(chart, CASES[case])
    env = rendered.env()
    referenced = SECRET_PATTERN.findall(rendered.config_text)
    for name in referenced:
        assert name in env, f"config.toml references ${{{name}}} but the container does not set it"
        assert "secretKeyRef" in env[name].get("valueFrom", {}), f"{name} must come from a Secret"
        assert "value" not in env[name]
    # The chart never creates a Secret: credentials stay in Secrets the operator owns.
    assert rendered.all("Secret") == []


@pytest.mark.parametrize("case, variables", [
    ("redis", {"STORMLOCK_BACKEND_MAIN_URL": ("stormlock-redis", "url")}),
    ("postgres", {"STORMLOCK_BACKEND_MAIN_URL": ("stormlock-postgres", "url")}),
    ("etcd", {"STORMLOCK_BACKEND_MAIN_PASSWORD": ("stormlock-etcd", "password")}),
    ("mixed", {"STORMLOCK_MYSQL_PASSWORD": ("stormlock-mysql", "password")}),
])
def test_backend_credentials_come_from_secret_key_refs(chart, case, variables):
    rendered = render(chart, CASES[case])
    env = rendered.env()
    for name, (secret, key) in variables.items():
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}
        assert f"${{{name}}}" in rendered.config_text
    for name, value in env.items():
        if "value" in value:
            assert "://" not in value["value"] and "@" not in value["value"], name


def _backend_files(rendered: Rendered, name: str) -> dict[str, tuple[str, str]]:
    """Backend NAME's TLS files as the daemon reads them: {path in config.toml's
    key: (Secret, key)}, following the config to the mount and the volume."""
    backend = rendered.config["backends"][name]
    volume = f"backend-{name.replace('_', '-')}-tls"
    mount = rendered.mount(volume)
    assert mount["readOnly"] is True
    projected = rendered.volume(volume)["projected"]
    assert projected["defaultMode"] == 0o440
    files = {item["path"]: (source["secret"]["name"], item["key"])
             for source in projected["sources"] for item in source["secret"]["items"]}
    out = {}
    for key in ("ca_file", "cert_file", "key_file"):
        if key in backend:
            directory, filename = backend[key].rsplit("/", 1)
            assert directory == mount["mountPath"] == f"/etc/stormlock/backends/{name}", key
            out[key] = files.pop(filename)
    assert files == {}, f"mounted but not in config.toml: {files}"
    return out


def test_etcd_tls_files_are_mounted_where_the_config_points(chart):
    rendered = render(chart, CASES["etcd"])
    assert _backend_files(rendered, "main") == {
        "ca_file": ("stormlock-etcd-client", "ca.crt"),
        "cert_file": ("stormlock-etcd-client", "tls.crt"),
        "key_file": ("stormlock-etcd-client", "tls.key"),
    }
    only_ca = render(chart, {"backends": {"main": {"type": "etcd", "endpoints": ["https://e:2379"],
                                                   "tls": {"secretName": "etcd-ca"}}}})
    assert set(only_ca.config["backends"]["main"]) == {"type", "endpoints", "ca_file"}
    assert _backend_files(only_ca, "main") == {"ca_file": ("etcd-ca", "ca.crt")}


@pytest.mark.parametrize("url", [
    "rediss://:hunter2@redis:6379/0",
    "rediss://stormlock:hunter2@redis:6379/0",
])
def test_schema_rejects_inline_redis_passwords(chart, url):
    assert "/backends/main/url" in render_error(chart, {"backends": {"main": {"type": "redis", "url": url}}})


@pytest.mark.parametrize("url", [
    "postgres://stormlock:hunter2@pg/locks",
    "postgres://pg/locks?user=stormlock&password=hunter2",
])
def test_schema_rejects_inline_sql_passwords(chart, url):
    assert "/backends/main/url" in render_error(chart, {"backends": {"main": {"type": "postgres", "url": url}}})


def test_urls_without_passwords_or_with_env_references_are_accepted(chart):
    ok = render(chart, {"backends": {"main": {"type": "postgres", "url": "postgres://stormlock:${PGPASS}@pg:5432/locks?sslmode=require"}},
                        "extraEnv": [{"name": "PGPASS", "valueFrom": {"secretKeyRef": {"name": "pg", "key": "password"}}}]})
    assert ok.config["backends"]["main"]["url"] == "postgres://stormlock:${PGPASS}@pg:5432/locks?sslmode=require"


def test_backend_needs_a_url(chart):
    assert "needs url, or urlSecret" in render_error(chart, {"backends": {"main": {"type": "redis"}}})
    both = {"backends": {"main": {"type": "redis", "url": "redis://r", "urlSecret": {"name": "a", "key": "b"}}}}
    assert "set url or urlSecret, not both" in render_error(chart, both)


LITERAL_PASSWORDS = [
    "postgres://stormlock:pa$$word@pg/locks",
    "postgres://stormlock:${NOT_A_VAR@pg/locks",
    "postgres://stormlock:$${PGPASS}@pg/locks",       # $${ is a literal ${: the password is "${PGPASS}"
    "postgres://stormlock:${PGPASS}tail@pg/locks",
    "postgres://stormlock:$@pg/locks",
    "postgres://stormlock:${}@pg/locks",
    "postgres://stormlock:${PGPASS}@x@pg/locks",       # the user information ends at the last @
    "postgres://a@b:hunter2@pg/locks",
    "postgres://pg/locks?password=pa$$word",
    "postgres://pg/locks?sslmode=require&password=${NOT_A_VAR",
    "postgres://pg/locks?PassWord=${PGPASS}$",
    "postgres://pg/locks?sslpassword=hunter2",
]


@pytest.mark.parametrize("url", LITERAL_PASSWORDS)
def test_a_dollar_does_not_get_a_literal_password_past_the_guard(chart, schemaless_chart, url):
    """Only ${NAME} references make a password in a URL acceptable: a `$`
    anywhere else leaves it literal, and the daemon would use it as written."""
    values = {"backends": {"main": {"type": "postgres", "url": url}}, "replicaCount": 2}
    assert "/backends/main/url" in render_error(chart, values)
    message = render_error(schemaless_chart, values)
    assert "backends.main.url carries a literal password" in message and "urlSecret" in message
    redis = {"backends": {"main": {"type": "redis", "url": url.replace("postgres://", "rediss://", 1)}}}
    assert "/backends/main/url" in render_error(chart, redis)


@pytest.mark.parametrize("url", [
    "postgres://stormlock:${PGPASS}@pg:5432/locks?sslmode=require",
    "postgres://stormlock:${PG_A}${PG_B}@pg:5432/locks",
    "postgres://stormlock@pg/locks?password=${PGPASS}&application_name=stormlock",
    "postgres://pg:5432/locks",
])
def test_urls_whose_password_is_only_env_references_are_accepted(chart, schemaless_chart, url):
    env = [{"name": n, "valueFrom": {"secretKeyRef": {"name": "pg", "key": n.lower()}}}
           for n in re.findall(r"\$\{([A-Z_]+)\}", url)]
    for which in (chart, schemaless_chart):
        rendered = render(which, {"backends": {"main": {"type": "postgres", "url": url}}, "extraEnv": env})
        assert rendered.config["backends"]["main"]["url"] == url


def test_the_daemon_takes_the_literal_passwords_the_guard_refuses_literally(unchecked_chart):
    """Why the guard must hold: `pa$$word` reaches the engine as written
    (check-config accepts it; nothing expands it), and an unterminated ${ is
    refused by the daemon itself."""
    literal = Rendered(unchecked_chart.render(merge(BASE, {"backends": {"main": {
        "type": "postgres", "url": "postgres://stormlock:pa$$word@pg/locks"}}}), name=RELEASE, namespace=NAMESPACE))
    assert literal.config["backends"]["main"]["url"] == "postgres://stormlock:pa$$word@pg/locks"
    assert daemon_check(literal).returncode == 0


def test_the_guard_is_the_same_in_the_schema_and_the_templates(chart):
    """The schema (what `helm install` checks first) and the templates (what
    holds with --skip-schema-validation) use the same two patterns."""
    patterns = [x["pattern"] for x in chart.schema["definitions"]["backendUrl"]["not"]["anyOf"]]
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    (guard,) = re.findall(r'define "stormlock.literalPassword" -\}\}\n(.*?)\n\{\{- end \}\}', helpers, re.S)
    assert re.findall(r"regexMatch `([^`]*)`", guard) == patterns


def test_connect_timeout_reaches_every_network_backend(chart):
    backends = {
        "r": {"type": "redis", "url": "rediss://r:6379", "connectTimeout": "1m"},
        "p": {"type": "postgres", "url": "postgres://pg/locks", "tls": {}, "connectTimeout": "10s"},
        "m": {"type": "mysql", "url": "mysql://my/locks", "tls": {}, "connectTimeout": "3s"},
        "e": {"type": "etcd", "endpoints": ["http://etcd:2379"], "connectTimeout": "4s"},
        "d": {"type": "dynamodb", "table": "locks", "region": "eu-west-1", "connectTimeout": "5s"},
    }
    cfg = render(chart, {"backends": {"main": None, **backends}, "config": {"defaults": {"backend": "r"}}}).config
    assert {n: b["connect_timeout"] for n, b in cfg["backends"].items()} == \
        {n: b["connectTimeout"] for n, b in backends.items()}
    assert "connect_timeout" not in render(chart, REDIS).config["backends"]["main"], "the daemon's default"


def test_dynamodb_endpoint_is_guarded_too(chart):
    values = {"backends": {"main": {"type": "dynamodb", "table": "locks", "region": "eu-west-1",
                                    "endpoint": "https://user:pa$$word@dynamo.internal"}}, "replicaCount": 2}
    assert "/backends/main/endpoint" in render_error(chart, values)


# --------------------------------------------------------------------------- backend TLS


# Each engine with TLS on, as the chart's values put it.
TLS_BACKENDS = {
    "redis": {"type": "redis", "urlSecret": {"name": "redis-cred", "key": "url"},
              "tls": {"secretName": "redis-ca"}, "connectTimeout": "5s"},
    "postgres": {"type": "postgres", "urlSecret": {"name": "pg-cred", "key": "url"},
                 "tls": {"secretName": "pg-ca", "caKey": "root.pem"}, "connectTimeout": "3s"},
    "mysql": {"type": "mysql", "url": "mysql://stormlock@mariadb.db:3306/locks",
              "tls": {"secretName": "mysql-ca"}, "connectTimeout": "4s"},
    "etcd": {"type": "etcd", "endpoints": ["https://etcd-0.etcd:2379"],
             "tls": {"secretName": "etcd-ca", "clientCert": True, "clientCertSecretName": "etcd-client"},
             "connectTimeout": "6s"},
    # Client certificates: with the CA from another Secret, from the same
    # Secret as the CA, or alone (the public roots verify the server).
    "redis-client-cert": {"type": "redis", "urlSecret": {"name": "redis-cred", "key": "url"},
                          "tls": {"secretName": "redis-ca", "clientCert": True,
                                  "clientCertSecretName": "redis-client"}},
    "redis-client-cert-only": {"type": "redis", "url": "rediss://redis.db:6380/0",
                               "tls": {"secretName": "redis-client", "ca": False, "clientCert": True}},
    "postgres-client-cert": {"type": "postgres", "urlSecret": {"name": "pg-cred", "key": "url"},
                             "tls": {"secretName": "pg-tls", "caKey": "root.pem", "clientCert": True}},
    "mysql-client-cert": {"type": "mysql", "url": "mysql://stormlock@mariadb.db:3306/locks",
                          "tls": {"mode": "require", "clientCert": True, "clientCertSecretName": "mysql-client"}},
    "dynamodb": {"type": "dynamodb", "table": "locks", "region": "eu-west-1",
                 "endpoint": "https://dynamo.internal:8443", "tls": {"secretName": "dynamo-ca"}},
}
# What config.toml says for each (besides the files) and which files it names.
TLS_EXPECTED = {
    "redis": ({"connect_timeout": "5s"}, {"ca_file": ("redis-ca", "ca.crt")}),
    "postgres": ({"tls": "verify-full", "connect_timeout": "3s"}, {"ca_file": ("pg-ca", "root.pem")}),
    "mysql": ({"tls": "verify-full", "connect_timeout": "4s"}, {"ca_file": ("mysql-ca", "ca.crt")}),
    "etcd": ({"connect_timeout": "6s"}, {"ca_file": ("etcd-ca", "ca.crt"), "cert_file": ("etcd-client", "tls.crt"),
                                          "key_file": ("etcd-client", "tls.key")}),
    "redis-client-cert": ({}, {"ca_file": ("redis-ca", "ca.crt"), "cert_file": ("redis-client", "tls.crt"),
                               "key_file": ("redis-client", "tls.key")}),
    "redis-client-cert-only": ({"url": "rediss://redis.db:6380/0"},
                               {"cert_file": ("redis-client", "tls.crt"), "key_file": ("redis-client", "tls.key")}),
    "postgres-client-cert": ({"tls": "verify-full"}, {"ca_file": ("pg-tls", "root.pem"), "cert_file": ("pg-tls", "tls.crt"),
                                                      "key_file": ("pg-tls", "tls.key")}),
    "mysql-client-cert": ({"tls": "require"},
                          {"cert_file": ("mysql-client", "tls.crt"), "key_file": ("mysql-client", "tls.key")}),
    "dynamodb": ({"endpoint": "https://dynamo.internal:8443"}, {"ca_file": ("dynamo-ca", "ca.crt")}),
}


@pytest.mark.parametrize("engine", TLS_BACKENDS)
def test_backend_tls_renders_the_files_the_daemon_reads(chart, engine):
    """The CA and the client certificate come from Secrets, mounted
    read-only where config.toml points; the SQL engines default to
    verify-full; the daemon's check-config accepts the result (render())."""
    rendered = render(chart, {"replicaCount": 2, "backends": {"main": TLS_BACKENDS[engine]}})
    backend = rendered.config["backends"]["main"]
    settings, files = TLS_EXPECTED[engine]
    assert {k: backend[k] for k in settings} == settings
    assert _backend_files(rendered, "main") == files
    # Nothing else gets the files: no other mount of those Secrets.
    secrets = {s for s, _ in files.values()}
    for volume in rendered.pod_spec["volumes"]:
        if volume["name"] != "backend-main-tls":
            assert volume.get("secret", {}).get("secretName") not in secrets
    # A change of the CA's place rolls the pods (the config's checksum).
    checksum = rendered.deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum == hashlib.sha256(rendered.config_text.encode()).hexdigest()


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_sql_tls_modes(chart, engine):
    url = {"postgres": "postgres://stormlock@pg.db/locks", "mysql": "mysql://stormlock@mysql.db/locks"}[engine]
    def backend(tls=None):
        b = {"type": engine, "url": url}
        if tls is not None:
            b["tls"] = tls
        return render(chart, {"replicaCount": 2, "backends": {"main": b}})
    public_roots = backend({})
    assert public_roots.config["backends"]["main"]["tls"] == "verify-full"
    assert "ca_file" not in public_roots.config["backends"]["main"]
    assert not any(v["name"] == "backend-main-tls" for v in public_roots.pod_spec["volumes"])
    assert "WARNING: backend main" not in public_roots.notes
    require = backend({"mode": "require"})
    assert require.config["backends"]["main"]["tls"] == "require"
    assert "tls.mode require: encrypted, but the server is not\nverified" in require.notes
    assert backend({"mode": "disable"}).config["backends"]["main"]["tls"] == "disable"
    unset = backend()
    assert "tls" not in unset.config["backends"]["main"]
    assert f"WARNING: backend main ({engine}) has no tls" in unset.notes


@pytest.mark.parametrize("backend, words", [
    ({"type": "redis", "url": "redis://redis.db:6379/0", "tls": {"secretName": "redis-ca"}},
     "backends.main (redis): ca_file: only used with a rediss:// url"),
    ({"type": "postgres", "url": "postgres://pg/locks", "tls": {"mode": "require", "secretName": "pg-ca"}},
     'backends.main (postgres): ca_file: only used with tls = "verify-full"'),
    ({"type": "mysql", "url": "mysql://my/locks", "tls": {"mode": "disable", "secretName": "my-ca"}},
     'backends.main (mysql): ca_file: only used with tls = "verify-full"'),
    ({"type": "etcd", "endpoints": ["http://etcd:2379"], "tls": {"secretName": "etcd-ca"}},
     "backends.main (etcd): ca_file: only used with https:// endpoints"),
    ({"type": "etcd", "endpoints": ["http://etcd:2379"], "tls": {"secretName": "etcd-client", "ca": False, "clientCert": True}},
     "backends.main (etcd): cert_file: only used with https:// endpoints"),
    ({"type": "redis", "url": "redis://redis.db:6379/0", "tls": {"secretName": "redis-client", "ca": False, "clientCert": True}},
     "backends.main (redis): cert_file: only used with a rediss:// url"),
    ({"type": "postgres", "url": "postgres://pg/locks", "tls": {"mode": "disable", "secretName": "pg-client", "ca": False,
                                                                "clientCert": True}},
     'backends.main (postgres): cert_file: only used with tls = "require" or "verify-full"'),
    ({"type": "mysql", "url": "mysql://my/locks", "tls": {"mode": "disable", "clientCert": True, "clientCertSecretName": "my-client"}},
     'backends.main (mysql): cert_file: only used with tls = "require" or "verify-full"'),
    ({"type": "dynamodb", "table": "locks", "region": "eu-west-1", "tls": {"secretName": "dynamo-ca"}},
     "backends.main (dynamodb): ca_file: only used with an https:// endpoint"),
    ({"type": "dynamodb", "table": "locks", "region": "eu-west-1", "endpoint": "http://dynamo.internal:8000",
      "tls": {"secretName": "dynamo-ca"}},
     "backends.main (dynamodb): ca_file: only used with an https:// endpoint"),
    ({"type": "etcd", "endpoints": ["http://etcd:2379"], "username": "stormlock"},
     "backends.main (etcd): password: must be set with username"),
    ({"type": "etcd", "endpoints": ["http://etcd:2379"], "passwordSecret": {"name": "e", "key": "p"}},
     "backends.main (etcd): username: must be set with password"),
])
@pytest.mark.parametrize("which", ["chart", "schemaless_chart"])
def test_backend_tls_contradictions_are_refused_in_the_daemons_words(request, unchecked_chart, which, backend, words):
    values = {"replicaCount": 2, "backends": {"main": backend}}
    assert words in render_error(request.getfixturevalue(which), values)
    # The daemon refuses the same configuration, for the same key.
    rendered = Rendered(unchecked_chart.render(merge(BASE, values), name=RELEASE, namespace=NAMESPACE))
    result = daemon_check(rendered)
    assert result.returncode != 0, rendered.config_text
    key = words.split(": ")[1]
    assert f"backends.main.{key}" in result.stderr or f"{key}:" in result.stderr, result.stderr


@pytest.mark.parametrize("backend, schema_path, words", [
    ({"type": "redis", "url": "rediss://r:6379", "connectTimeout": "0s"}, "/backends/main/connectTimeout",
     "connect_timeout: must be at least 1s"),
    ({"type": "postgres", "url": "postgres://pg/locks", "tls": {"mode": "sometimes"}}, "/backends/main/tls/mode",
     'tls.mode is "sometimes"'),
    ({"type": "redis", "url": "rediss://r:6379", "tls": {"caKey": "ca.crt"}}, "secretName",
     "backends.main (redis): tls.secretName is empty"),
    ({"type": "dynamodb", "table": "locks", "region": "eu-west-1", "endpoint": "https://d:8443", "tls": {"caKey": "ca.crt"}},
     "secretName", None),
    ({"type": "dynamodb", "table": "locks", "region": "eu-west-1", "endpoint": "https://d:8443",
      "tls": {"secretName": "x", "clientCert": True}}, "'clientCert' not allowed", None),
    ({"type": "redis", "url": "rediss://r:6379", "tls": {"secretName": "x", "clientCert": "yes"}},
     "/backends/main/tls/clientCert", None),
    ({"type": "postgres", "url": "postgres://pg/locks", "tls": {"clientCertSecretName": ""}},
     "/backends/main/tls/clientCertSecretName", None),
])
def test_backend_tls_values_the_schema_refuses(chart, schemaless_chart, backend, schema_path, words):
    """Malformed TLS values; DynamoDB takes a CA but no client certificate
    (it authenticates with AWS credentials)."""
    values = {"replicaCount": 2, "backends": {"main": backend}}
    message = render_error(chart, values)
    assert "schema" in message and schema_path in message
    if words:
        assert words in render_error(schemaless_chart, values)


@pytest.mark.parametrize("engine", ["redis", "postgres", "mysql"])
def test_a_client_certificate_needs_a_secret(schemaless_chart, engine):
    """tls.clientCert names no Secret of its own without secretName (the
    schema requires secretName for redis, not for the SQL engines)."""
    url = {"redis": "rediss://r:6380/0", "postgres": "postgres://pg/locks", "mysql": "mysql://my/locks"}[engine]
    values = {"replicaCount": 2, "backends": {"main": {"type": engine, "url": url, "tls": {"clientCert": True}}}}
    assert f"backends.main ({engine}): tls.clientCert is true but no Secret is named" in \
        render_error(schemaless_chart, values)


def test_client_certificates_without_a_ca_keep_the_public_roots(chart):
    """tls.ca: false with a client certificate: no ca_file, so the public
    roots verify the server; the client certificate is mounted alone."""
    rendered = render(chart, {"replicaCount": 2, "backends": {"main": {
        "type": "postgres", "url": "postgres://stormlock@pg.db/locks",
        "tls": {"secretName": "pg-client", "ca": False, "clientCert": True}}}})
    backend = rendered.config["backends"]["main"]
    assert backend["tls"] == "verify-full" and "ca_file" not in backend
    sources = rendered.volume("backend-main-tls")["projected"]["sources"]
    assert sources == [{"secret": {"name": "pg-client", "items": [{"key": "tls.crt", "path": "tls.crt"},
                                                                  {"key": "tls.key", "path": "tls.key"}]}}]


# --------------------------------------------------------------------------- checksum


def test_checksum_is_the_hash_of_the_rendered_config(chart):
    rendered = render(chart, CASES["embedded"])
    annotation = rendered.deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert annotation == hashlib.sha256(rendered.config_text.encode()).hexdigest()


def test_checksum_changes_when_config_changes(chart):
    def checksum(values):
        return render(chart, values).deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = checksum({})
    assert checksum({}) == base
    assert checksum({"config": {"defaults": {"ttl": "2h"}}}) != base
    assert checksum({"config": {"auth": {"admins": ["root-ops"]}}}) != base
    assert checksum({"backends": {"main": {"type": "embedded", "path": "b.redb"}}}) != base
    assert checksum(merge(NO_CLIENT_CERTS, {"auth": {"tokens": [{"principal": "ci", "sha256": TOKEN_SHA256}]}})) != base
    # Values that do not reach config.toml leave it alone.
    assert checksum({"resources": {"limits": {"memory": "1Gi"}}}) == base
    assert checksum({"podAnnotations": {"team": "sre"}}) == base


# --------------------------------------------------------------------------- TLS


def test_existing_tls_secret(chart):
    rendered = render(chart, CASES["embedded"])
    assert rendered.volume("tls")["secret"]["secretName"] == "stormlock-server-tls"
    assert {i["key"] for i in rendered.volume("tls")["secret"]["items"]} == {"tls.crt", "tls.key"}
    assert rendered.mount("tls")["mountPath"] == "/etc/stormlock/tls"
    assert rendered.all("Certificate") == []
    assert "--insecure" not in rendered.container["args"]
    assert render(chart).volume("tls")["secret"]["secretName"] == f"{RELEASE}-stormlock-tls"


def test_cert_manager_certificate(chart):
    rendered = render(chart, CASES["postgres"])
    (cert,) = [c for c in rendered.all("Certificate") if "server auth" in c["spec"]["usages"]]
    assert cert["metadata"]["name"] == f"{RELEASE}-stormlock"
    spec = cert["spec"]
    assert spec["issuerRef"] == {"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert spec["secretName"] == rendered.volume("tls")["secret"]["secretName"]
    fullname = rendered.service["metadata"]["name"]
    assert {fullname, f"{fullname}.{NAMESPACE}", f"{fullname}.{NAMESPACE}.svc",
            f"{fullname}.{NAMESPACE}.svc.cluster.local", "locks.example.internal"} == set(spec["dnsNames"])
    assert "server auth" in spec["usages"]
    assert (spec["duration"], spec["renewBefore"]) == ("2160h", "360h")


def test_cert_manager_needs_an_issuer(chart):
    message = render_error(chart, {"tls": {"certManager": {"enabled": True}}})
    assert "tls.certManager.issuerRef.name is empty" in message


def test_mutual_tls(chart):
    rendered = render(chart, CASES["redis"])
    assert rendered.config["tls"]["client_ca"] == "/etc/stormlock/client-ca/ca.crt"
    assert rendered.mount("client-ca")["mountPath"] == "/etc/stormlock/client-ca"
    assert rendered.volume("client-ca")["secret"]["secretName"] == "stormlock-client-ca"
    args = rendered.test_pod["spec"]["containers"][0]["args"]
    assert "-tls-client-cert=/etc/stormlock-test/client/tls.crt" in args
    volumes = {v["name"]: v for v in rendered.test_pod["spec"]["volumes"]}
    assert volumes["client"]["secret"]["secretName"] == "stormlock-test-client"
    tokens_only = render(chart, CASES["tokens"])
    assert "client_ca" not in tokens_only.config["tls"]
    assert not any(v["name"] == "client-ca" for v in tokens_only.pod_spec["volumes"])


def test_mutual_tls_with_cert_manager_issues_the_test_client_certificate(chart):
    rendered = render(chart, CASES["etcd"])
    certs = {c["metadata"]["name"]: c["spec"] for c in rendered.all("Certificate")}
    client = certs[f"{RELEASE}-stormlock-test-client"]
    assert client["usages"] == ["client auth", "digital signature"]
    # From the release's own client CA, not the server's issuer (stormlock-ca).
    assert client["issuerRef"] == {"name": f"{RELEASE}-stormlock-client-ca", "kind": "Issuer", "group": "cert-manager.io"}
    volumes = {v["name"]: v for v in rendered.test_pod["spec"]["volumes"]}
    assert volumes["client"]["secret"]["secretName"] == client["secretName"]


def test_mutual_tls_test_client_certificate_defaults_to_a_secret_named_after_the_release(chart):
    """Without cert-manager the helm test's client certificate is a Secret the
    operator creates next to the server's; the NOTES say how."""
    rendered = render(chart)
    volumes = {v["name"]: v for v in rendered.test_pod["spec"]["volumes"]}
    assert volumes["client"]["secret"]["secretName"] == f"{RELEASE}-stormlock-test-client"
    assert rendered.all("Certificate") == []
    assert f"create secret tls {RELEASE}-stormlock-test-client" in rendered.notes
    assert render(chart, {"tests": {"enabled": False}}).all("Pod") == []
    named = render(chart, {"tests": {"tls": {"clientSecretName": "my-probe"}}})
    assert {v["name"]: v for v in named.test_pod["spec"]["volumes"]}["client"]["secret"]["secretName"] == "my-probe"


def test_plaintext_needs_the_loud_value(chart):
    rendered = render(chart, CASES["insecure"])
    assert rendered.container["args"][-1] == "--insecure"
    assert "tls" not in rendered.config
    assert not any(v["name"] in ("tls", "client-ca") for v in rendered.pod_spec["volumes"])
    assert "TLS IS DISABLED" in rendered.notes
    assert "-tls" not in rendered.test_pod["spec"]["containers"][0]["args"]
    for case in CASES:
        if not CASES[case].get("tls", {}).get("dangerouslyDisableTLS"):
            assert "--insecure" not in render(chart, CASES[case]).container["args"], case


# --------------------------------------------------------------------------- authentication


def _flat(text: str) -> str:
    """NOTES.txt with its line breaks and runs of spaces folded, to look for sentences."""
    return " ".join(text.split())


def test_default_install_authenticates_every_caller(chart):
    """The default release runs mutual TLS: the client CA is the ca.crt of the
    server's Secret, so a caller without a certificate from it is refused."""
    rendered = render(chart)
    cfg = rendered.config
    assert cfg["tls"]["client_ca"] == "/etc/stormlock/client-ca/ca.crt"
    directory, filename = cfg["tls"]["client_ca"].rsplit("/", 1)
    assert rendered.mount("client-ca")["mountPath"] == directory
    secret = rendered.volume("client-ca")["secret"]
    assert secret["secretName"] == rendered.volume("tls")["secret"]["secretName"] == f"{RELEASE}-stormlock-tls"
    assert secret["items"] == [{"key": "ca.crt", "path": filename}]
    assert "(TLS, client certificates required)" in rendered.notes
    assert "WARNING" not in rendered.notes
    # The helm test presents a client certificate.
    args = rendered.test_pod["spec"]["containers"][0]["args"]
    assert "-tls-client-cert=/etc/stormlock-test/client/tls.crt" in args


@pytest.mark.parametrize("case", CASES)
def test_every_render_authenticates_callers_or_warns_loudly(chart, case):
    rendered = render(chart, CASES[case])
    cfg = rendered.config
    authenticated = "client_ca" in cfg.get("tls", {}) or bool(cfg["auth"].get("tokens"))
    opted_out = CASES[case].get("auth", {}).get("dangerouslyAllowUnauthenticated", False)
    assert authenticated != opted_out, case
    assert ("CALLERS ARE NOT AUTHENTICATED" in rendered.notes) == opted_out, case


@pytest.mark.parametrize("values, reason", [
    (NO_CLIENT_CERTS, "tls.clientAuth.enabled is false and auth.tokens is empty"),
    ({"tls": {"dangerouslyDisableTLS": True}},
     "tls.dangerouslyDisableTLS is true, so there are no client certificates, and bearer tokens are refused over plaintext"),
    (merge(NO_CLIENT_CERTS, CERT_MANAGER), "tls.clientAuth.enabled is false and auth.tokens is empty"),
    (merge(NO_CLIENT_CERTS, {"auth": {"tokens": []}}), "tls.clientAuth.enabled is false and auth.tokens is empty"),
])
@pytest.mark.parametrize("which", ["chart", "schemaless_chart"])
def test_a_render_that_authenticates_nobody_is_refused(request, which, values, reason):
    message = render_error(request.getfixturevalue(which), values)
    assert f"Nothing would authenticate callers ({reason})" in message
    assert "anyone who can reach the gRPC port could list, take and release any lock" in message
    for value in ("auth.tokens", "stormlockd new-token", "auth.dangerouslyAllowUnauthenticated: true"):
        assert value in message
    assert "tls.clientAuth.enabled: true" in message


def test_the_opt_out_renders_without_authentication_and_warns(chart):
    rendered = render(chart, UNAUTHENTICATED)
    cfg = rendered.config
    assert "client_ca" not in cfg["tls"] and "tokens" not in cfg["auth"]
    assert not any(v["name"] == "client-ca" for v in rendered.pod_spec["volumes"])
    assert "-tls-client-cert=/etc/stormlock-test/client/tls.crt" not in rendered.test_pod["spec"]["containers"][0]["args"]
    notes = _flat(rendered.notes)
    assert "(TLS, CALLERS NOT AUTHENTICATED)" in notes
    assert "WARNING: CALLERS ARE NOT AUTHENTICATED (auth.dangerouslyAllowUnauthenticated=true)" in notes
    assert "Anyone who can reach the gRPC port" in notes
    assert "can list, take and release any lock" in notes
    plaintext = render(chart, CASES["insecure"])
    assert "tls" not in plaintext.config and "tokens" not in plaintext.config["auth"]
    assert "WARNING: CALLERS ARE NOT AUTHENTICATED" in plaintext.notes and "TLS IS DISABLED" in plaintext.notes


@pytest.mark.parametrize("values, fragment", [
    (merge(UNAUTHENTICATED, {"config": {"auth": {"admins": ["ops-admin"]}}}), "config.auth.admins is set (ops-admin)"),
    (merge(UNAUTHENTICATED, {"config": {"extraToml": '[[auth.rules]]\nprincipals = ["ci-*"]\nactions = ["*"]\n'}}),
     "config.extraToml has [[auth.rules]]"),
    ({"tls": {"dangerouslyDisableTLS": True}, "auth": {"dangerouslyAllowUnauthenticated": True},
      "config": {"auth": {"admins": ["a", "b"]}}}, "config.auth.admins is set (a, b)"),
])
@pytest.mark.parametrize("which", ["chart", "schemaless_chart"])
def test_rights_without_authentication_are_refused_even_with_the_opt_out(request, which, values, fragment):
    """stormlockd refuses to start with [auth] admins or [[auth.rules]] when it
    authenticates nobody; the chart says so at render time instead."""
    message = render_error(request.getfixturevalue(which), values)
    assert fragment in message
    assert "nothing authenticates callers" in message
    assert "stormlockd refuses to start" in message
    assert "auth.tokens" in message


def test_cert_manager_issues_an_administrator_client_certificate(chart):
    rendered = render(chart, CERT_MANAGER)
    certs = {c["metadata"]["name"]: c["spec"] for c in rendered.all("Certificate")}
    admin = certs[f"{RELEASE}-stormlock-admin-client"]
    assert admin["commonName"] == "stormlock-admin"
    assert "client auth" in admin["usages"] and "server auth" not in admin["usages"]
    assert admin["secretName"] == f"{RELEASE}-stormlock-admin-client"
    assert admin["issuerRef"] == {"name": f"{RELEASE}-stormlock-client-ca", "kind": "Issuer", "group": "cert-manager.io"}
    # A Secret of its own, apart from the server's, the client CA's and the helm test's.
    others = [spec["secretName"] for name, spec in certs.items() if name != f"{RELEASE}-stormlock-admin-client"]
    assert admin["secretName"] not in others
    assert rendered.config["auth"]["admins"] == ["stormlock-admin"]
    # Signed by the Issuer whose CA the daemon trusts for client certificates.
    (issuer,) = [i for i in rendered.all("Issuer") if i["metadata"]["name"] == admin["issuerRef"]["name"]]
    client_ca = rendered.volume("client-ca")["secret"]
    assert client_ca["secretName"] == issuer["spec"]["ca"]["secretName"]
    assert client_ca["items"] == [{"key": "tls.crt", "path": "ca.crt"}]
    notes = rendered.notes
    secret = admin["secretName"]
    for key in ("tls\\.crt", "tls\\.key"):
        assert f"kubectl -n {NAMESPACE} get secret {secret} -o jsonpath='{{.data.{key}}}' | base64 -d" in notes
    # The server CA comes from the server certificate's Secret: the admin
    # Secret's ca.crt is the client CA, which would not verify the server.
    server_secret = certs[f"{RELEASE}-stormlock"]["secretName"]
    assert (f"kubectl -n {NAMESPACE} get secret {server_secret} -o jsonpath='{{.data.ca\\.crt}}' | base64 -d > ca.crt"
            in notes)
    assert f"get secret {secret} -o jsonpath='{{.data.ca\\.crt}}'" not in notes
    assert (f"stormlock --addr {RELEASE}-stormlock.{NAMESPACE}.svc.cluster.local:7466 "
            "--ca ca.crt --cert admin.crt --key admin.key list") in notes
    assert "stormlock-admin (in [auth] admins)" in _flat(notes)


def _client_ca_resources(rendered: Rendered) -> dict[str, dict]:
    """The client CA's cert-manager resources by kind and role."""
    issuers = {i["metadata"]["name"]: i["spec"] for i in rendered.all("Issuer")}
    certs = {c["metadata"]["name"]: c["spec"] for c in rendered.all("Certificate")}
    return {"issuers": issuers, "certs": certs}


def test_cert_manager_gives_the_release_a_client_ca_of_its_own(chart):
    """cert-manager's CA Issuer pattern: a self-signed Issuer signs the client
    CA, a CA Issuer signs client certificates with it, and the daemon trusts
    that CA only, not the server issuer's, which may sign anything."""
    rendered = render(chart, CERT_MANAGER)
    found = _client_ca_resources(rendered)
    issuers, certs = found["issuers"], found["certs"]
    root, client_issuer = f"{RELEASE}-stormlock-client-ca-root", f"{RELEASE}-stormlock-client-ca"
    assert issuers == {root: {"selfSigned": {}}, client_issuer: {"ca": {"secretName": f"{RELEASE}-stormlock-client-ca"}}}
    ca = certs[f"{RELEASE}-stormlock-client-ca"]
    assert ca["isCA"] is True
    assert ca["issuerRef"] == {"name": root, "kind": "Issuer", "group": "cert-manager.io"}
    assert ca["secretName"] == issuers[client_issuer]["ca"]["secretName"]
    # The key survives renewal: client certificates signed before stay valid.
    assert ca["privateKey"]["rotationPolicy"] == "Never"
    assert "cert sign" in ca["usages"]
    assert (ca["duration"], ca["renewBefore"]) == ("87600h", "2160h")
    # The server certificate still comes from the server's issuer.
    assert certs[f"{RELEASE}-stormlock"]["issuerRef"]["name"] == "ca-issuer"
    # Every client certificate the chart issues comes from the client Issuer.
    clients = [spec for spec in certs.values() if "client auth" in spec.get("usages", [])]
    assert len(clients) == 2
    for spec in clients:
        assert spec["issuerRef"] == {"name": client_issuer, "kind": "Issuer", "group": "cert-manager.io"}
    # The daemon trusts the CA certificate itself (tls.crt of the key pair).
    assert rendered.volume("client-ca")["secret"] == {"secretName": ca["secretName"], "defaultMode": 0o440,
                                                      "items": [{"key": "tls.crt", "path": "ca.crt"}]}
    assert rendered.config["tls"]["client_ca"] == "/etc/stormlock/client-ca/ca.crt"
    # The helm test still verifies the server with the server's CA.
    ca_volume = {v["name"]: v for v in rendered.test_pod["spec"]["volumes"]}["ca"]
    assert ca_volume["secret"]["secretName"] == certs[f"{RELEASE}-stormlock"]["secretName"]


def test_notes_tell_where_the_server_ca_and_client_certificates_come_from(chart):
    rendered = render(chart, CERT_MANAGER)
    notes = rendered.notes
    server_secret = f"{RELEASE}-stormlock-tls"
    assert (f"kubectl -n {NAMESPACE} get secret {server_secret} -o jsonpath='{{.data.ca\\.crt}}' | base64 -d > ca.crt"
            in notes)
    assert f"client CA (Secret {RELEASE}-stormlock-client-ca, key tls.crt), which Issuer {RELEASE}-stormlock-client-ca issues" in _flat(notes)
    # The Certificate the NOTES show is valid and names the client Issuer.
    block = notes.split("<<EOF\n", 1)[1].split("\n  EOF", 1)[0]
    cert = yaml.safe_load("\n".join(line[2:] for line in block.splitlines()))
    jsonschema.validate(cert, helm_crd_schemas.CERTIFICATE)
    (issuer,) = [i for i in rendered.all("Issuer") if i["metadata"]["name"] == cert["spec"]["issuerRef"]["name"]]
    assert "ca" in issuer["spec"] and cert["spec"]["issuerRef"]["kind"] == "Issuer"
    assert cert["spec"]["usages"] == ["client auth", "digital signature"]
    assert "THE CLIENT CA IS THE SERVER ISSUER'S CA" not in notes


def test_an_existing_client_ca_key_pair(chart):
    rendered = render(chart, merge(CERT_MANAGER, {"tls": {"certManager": {"clientCA": {
        "create": False, "secretName": "corp-client-ca"}}}}))
    found = _client_ca_resources(rendered)
    # No root and no CA Certificate: the Issuer signs with the key pair you keep.
    assert found["issuers"] == {f"{RELEASE}-stormlock-client-ca": {"ca": {"secretName": "corp-client-ca"}}}
    assert not any(spec.get("isCA") for spec in found["certs"].values())
    assert rendered.volume("client-ca")["secret"]["secretName"] == "corp-client-ca"
    assert rendered.volume("client-ca")["secret"]["items"] == [{"key": "tls.crt", "path": "ca.crt"}]
    admin = found["certs"][f"{RELEASE}-stormlock-admin-client"]
    assert admin["issuerRef"]["name"] == f"{RELEASE}-stormlock-client-ca"


def test_a_client_ca_certificate_of_yours_means_the_chart_issues_no_client_certificates(chart):
    rendered = render(chart, merge(CERT_MANAGER, {"tls": {"clientAuth": {"caSecretName": "corp-ca", "caKey": "bundle.pem"}}}))
    assert rendered.all("Issuer") == []
    assert [c["metadata"]["name"] for c in rendered.all("Certificate")] == [f"{RELEASE}-stormlock"]
    assert rendered.volume("client-ca")["secret"]["secretName"] == "corp-ca"
    assert rendered.volume("client-ca")["secret"]["items"] == [{"key": "bundle.pem", "path": "ca.crt"}]
    assert rendered.config["auth"]["admins"] == []
    assert f"create secret tls {RELEASE}-stormlock-test-client" in rendered.notes
    assert "Administrator credential" not in rendered.notes


@pytest.mark.parametrize("which", ["chart", "schemaless_chart"])
def test_the_server_issuers_ca_as_client_ca_is_a_visible_choice(request, which):
    chart = request.getfixturevalue(which)
    dangerous = {"tls": {"certManager": {"clientCA": {"dangerouslyUseServerIssuer": True}}}}
    rendered = render(chart, merge(CERT_MANAGER, dangerous))
    assert rendered.all("Issuer") == []
    certs = {c["metadata"]["name"]: c["spec"] for c in rendered.all("Certificate")}
    for name in (f"{RELEASE}-stormlock-admin-client", f"{RELEASE}-stormlock-test-client"):
        assert certs[name]["issuerRef"] == {"name": "ca-issuer", "kind": "Issuer", "group": "cert-manager.io"}
    assert rendered.volume("client-ca")["secret"]["secretName"] == certs[f"{RELEASE}-stormlock"]["secretName"]
    assert rendered.volume("client-ca")["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    notes = _flat(rendered.notes)
    assert "WARNING: THE CLIENT CA IS THE SERVER ISSUER'S CA (tls.certManager.clientCA.dangerouslyUseServerIssuer=true)" in notes
    assert "Every certificate Issuer ca-issuer has ever signed, for any service, authenticates as a client" in notes
    both = merge(CERT_MANAGER, dangerous, {"tls": {"clientAuth": {"caSecretName": "corp-ca"}}})
    assert "tls.clientAuth.caSecretName and tls.certManager.clientCA.dangerouslyUseServerIssuer are both set" \
        in render_error(chart, both)


def test_without_cert_manager_the_client_ca_stays_the_secrets_ca(chart):
    rendered = render(chart)
    assert rendered.all("Issuer") == [] and rendered.all("Certificate") == []
    assert rendered.volume("client-ca")["secret"]["secretName"] == f"{RELEASE}-stormlock-tls"


def test_administrator_client_certificate_settings(chart):
    custom = render(chart, merge(CERT_MANAGER, {
        "tls": {"certManager": {"adminClient": {"commonName": "ops-root", "secretName": "ops-root-cert"}}},
        "config": {"auth": {"admins": ["sre-oncall", "ops-root"]}},
    }))
    (admin,) = [c["spec"] for c in custom.all("Certificate") if c["spec"].get("commonName") == "ops-root"]
    assert admin["secretName"] == "ops-root-cert"
    assert custom.config["auth"]["admins"] == ["sre-oncall", "ops-root"]
    assert "get secret ops-root-cert" in custom.notes
    not_admin = render(chart, merge(CERT_MANAGER, {"tls": {"certManager": {"adminClient": {"grantAdmin": False}}}}))
    assert any(c["spec"].get("commonName") == "stormlock-admin" for c in not_admin.all("Certificate"))
    assert not_admin.config["auth"]["admins"] == []
    off = render(chart, merge(CERT_MANAGER, {"tls": {"certManager": {"adminClient": {"enabled": False}}}}))
    assert not any(c["spec"].get("commonName") == "stormlock-admin" for c in off.all("Certificate"))
    assert off.config["auth"]["admins"] == []
    # Without mutual TLS a client certificate would authenticate nobody: none is issued.
    tokens = {"auth": {"tokens": [{"principal": "ci", "sha256": TOKEN_SHA256}]}}
    no_mtls = render(chart, merge(CERT_MANAGER, NO_CLIENT_CERTS, tokens))
    assert [c["metadata"]["name"] for c in no_mtls.all("Certificate")] == [f"{RELEASE}-stormlock"]
    assert no_mtls.config["auth"]["admins"] == []


def test_tokens_render_auth_tokens_entries(chart):
    rendered = render(chart, CASES["tokens"])
    tokens = CASES["tokens"]["auth"]["tokens"]
    assert rendered.config["auth"]["tokens"] == [
        {"principal": "ci-deployer", "sha256": tokens[0]["sha256"]},
        {"principal": "ops-oncall", "sha256": "${STORMLOCK_AUTH_TOKEN_1_SHA256}"},
    ]
    assert "[[auth.tokens]]" in rendered.config_text
    env = rendered.env()
    assert env["STORMLOCK_AUTH_TOKEN_1_SHA256"]["valueFrom"]["secretKeyRef"] == {"name": "stormlock-tokens",
                                                                                  "key": "ops-oncall.sha256"}
    assert "STORMLOCK_AUTH_TOKEN_0_SHA256" not in env
    # Token principals may be administrators: tokens authenticate.
    assert rendered.config["auth"]["admins"] == ["ops-oncall"]
    notes = _flat(rendered.notes)
    assert "(TLS, bearer token required)" in notes
    assert "Bearer tokens for: ci-deployer, ops-oncall." in notes
    assert "--token-file" in notes
    # The helm test verifies the server but needs no client certificate.
    pod = rendered.test_pod["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["ca"]
    both = render(chart, {"auth": {"tokens": [{"principal": "ci", "sha256": TOKEN_SHA256}]}})
    assert "client_ca" in both.config["tls"] and len(both.config["auth"]["tokens"]) == 1
    assert "(TLS, client certificate or bearer token required)" in both.notes


@pytest.mark.parametrize("tokens", [
    {"auth": {"tokens": [{"principal": "ci", "sha256Secret": {"name": "tok", "key": "sha256"}}]}},
    {"config": {"extraToml": '[[auth.tokens]]\nprincipal = "ci"\nsha256 = "%s"\n' % ("ab" * 32)}},
])
@pytest.mark.parametrize("which", ["chart", "schemaless_chart"])
def test_tokens_over_plaintext_are_refused(request, which, tokens):
    """stormlockd refuses [[auth.tokens]] on a plaintext listener (a token would
    cross the network readable); the chart says so at render time."""
    values = merge({"tls": {"dangerouslyDisableTLS": True}}, tokens)
    message = render_error(request.getfixturevalue(which), values)
    assert "tls.dangerouslyDisableTLS" in message and "auth.tokens" in message
    assert "stormlockd refuses to start" in message
    # The opt-out does not make tokens over plaintext acceptable either.
    optout = merge(values, {"auth": {"dangerouslyAllowUnauthenticated": True}})
    assert "stormlockd refuses to start" in render_error(request.getfixturevalue(which), optout)


def test_tokens_in_extra_toml_count_as_authentication(chart):
    extra = f'[[auth.tokens]]\nprincipal = "ci"\nsha256 = "{TOKEN_SHA256}"\n'
    rendered = render(chart, merge(NO_CLIENT_CERTS, {"config": {"extraToml": extra}}))
    assert rendered.config["auth"]["tokens"] == [{"principal": "ci", "sha256": TOKEN_SHA256}]


@pytest.mark.parametrize("token, fragment", [
    ({"principal": "ci"}, "/auth/tokens/0"),
    ({"principal": "ci", "sha256": TOKEN_SHA256, "sha256Secret": {"name": "a", "key": "b"}}, "/auth/tokens/0"),
    ({"principal": "ci", "sha256": TOKEN_SHA256.upper()}, "/auth/tokens/0/sha256"),
    ({"principal": "ci", "sha256": "not-the-token-but-its-hash"}, "/auth/tokens/0/sha256"),
    ({"principal": "", "sha256": TOKEN_SHA256}, "/auth/tokens/0/principal"),
    ({"principal": "ci", "token": "s3cret"}, "additional properties 'token' not allowed"),
    ({"principal": "ci", "sha256Secret": {"name": "a"}}, "key"),
])
def test_schema_rejects_bad_tokens(chart, token, fragment):
    message = render_error(chart, {"auth": {"tokens": [token]}})
    assert "schema" in message and fragment in message


@pytest.mark.parametrize("token, fragment", [
    ({"principal": "ci"}, "auth.tokens[0] (principal \"ci\") needs sha256"),
    ({"principal": "ci", "sha256": TOKEN_SHA256, "sha256Secret": {"name": "a", "key": "b"}}, "set sha256 or sha256Secret, not both"),
    ({"principal": "ci", "sha256": "hunter2"}, "sha256 must be the token's SHA-256 as 64 lowercase hex digits"),
    ({"sha256": TOKEN_SHA256}, "auth.tokens[0] needs a principal"),
])
def test_templates_refuse_bad_tokens(schemaless_chart, token, fragment):
    assert fragment in render_error(schemaless_chart, {"auth": {"tokens": [token]}})


# --------------------------------------------------------------------------- the real daemon on the default config


def _built_binary(name: str) -> pathlib.Path:
    if name == "stormlockd" and os.environ.get("STORMLOCKD"):
        return pathlib.Path(os.environ["STORMLOCKD"])
    if name == "stormlock" and os.environ.get("STORMLOCKD"):
        return pathlib.Path(os.environ["STORMLOCKD"]).with_name("stormlock")
    cache = pathlib.Path(os.environ.get("STORMLOCK_CACHE") or pathlib.Path.home() / ".cache" / "stormlock")
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or cache / "target")
    return target / "debug" / name


def _binaries() -> tuple[pathlib.Path, pathlib.Path]:
    """The built stormlockd and stormlock, or skips the test."""
    daemon, cli = _built_binary("stormlockd"), _built_binary("stormlock")
    if not (daemon.is_file() and cli.is_file()):
        pytest.skip(f"no built daemon and CLI at {daemon} and {cli} (build them with cargo build, "
                    "or point STORMLOCKD at a stormlockd with the stormlock CLI next to it)")
    return daemon, cli


def _new_token(daemon: pathlib.Path, directory: pathlib.Path, principal: str) -> tuple[pathlib.Path, str]:
    """`stormlockd new-token PRINCIPAL`: a token file for the CLI, and the sha256 for the values."""
    out = subprocess.run([str(daemon), "new-token", principal], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    token = re.search(r"^token: (\S+)$", out, re.M).group(1)
    sha256 = re.search(r'^sha256 = "([0-9a-f]{64})"$', out, re.M).group(1)
    directory.mkdir(exist_ok=True)
    path = directory / f"{principal}.token"
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return path, sha256


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _openssl(cwd: pathlib.Path, *args: str) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"openssl {' '.join(args)}: {result.stderr}"


def _make_ca(cwd: pathlib.Path, name: str) -> None:
    _openssl(cwd, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", f"{name}.key", "-out", f"{name}.crt")


def _issue(cwd: pathlib.Path, ca: str, name: str, usage: str, san: str = "") -> None:
    """A certificate NAME.crt/NAME.key with CN NAME, signed by CA."""
    _openssl(cwd, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
    ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature", f"extendedKeyUsage={usage}"]
    if san:
        ext.append(f"subjectAltName={san}")
    (cwd / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")


def _local_config(config_text: str, paths: dict[str, str]) -> str:
    """The rendered config.toml with its listen addresses, data dir and TLS
    files moved to PATHS; every other line stays as rendered."""
    seen = set()

    def swap(match: re.Match) -> str:
        key = match.group(1)
        if key not in paths:
            return match.group(0)
        seen.add(key)
        return f"{key} = {json.dumps(paths[key])}"

    text = re.sub(r'(?m)^([a-z_]+) = "[^"\n]*"$', swap, config_text)
    assert seen == set(paths), f"not in the rendered config: {set(paths) - seen}"
    return text


class _Daemon:
    """stormlockd running on a chart's rendered config.toml, with its file
    paths and addresses moved to a temp dir and loopback, and a throwaway
    PKI: CA test-ca (the client CA) with a server certificate for 127.0.0.1
    and client certificates, and CA other-ca with one client certificate."""

    def __init__(self, rendered: Rendered, tmp_path: pathlib.Path, clients: list[str], env: dict | None = None):
        self.daemon, self.cli = _binaries()
        if shutil.which("openssl") is None:
            pytest.skip("openssl is not installed: it makes the test's certificates")
        self.pki = pki = tmp_path / "pki"
        pki.mkdir()
        _make_ca(pki, "test-ca")
        _issue(pki, "test-ca", "localhost", "serverAuth", "DNS:localhost,IP:127.0.0.1")
        for name in clients:
            _issue(pki, "test-ca", name, "clientAuth")
        _make_ca(pki, "other-ca")
        _issue(pki, "other-ca", "intruder", "clientAuth")

        self.port, metrics, health = _free_ports(3)
        paths = {
            "listen": f"127.0.0.1:{self.port}",
            "metrics_listen": f"127.0.0.1:{metrics}",
            "health_listen": f"127.0.0.1:{health}",
            "data_dir": str(tmp_path / "data"),
            "cert": str(pki / "localhost.crt"),
            "key": str(pki / "localhost.key"),
        }
        if "client_ca" in rendered.config["tls"]:
            paths["client_ca"] = str(pki / "test-ca.crt")
        text = _local_config(rendered.config_text, paths)
        assert "/etc/stormlock" not in text and "/var/lib/stormlock" not in text
        # Only the paths and addresses moved: everything else is the chart's.
        moved = ("listen", "metrics_listen", "health_listen", "data_dir", "tls")
        cfg, rendered_cfg = tomllib.loads(text), rendered.config
        assert {k: v for k, v in cfg.items() if k not in moved} == {k: v for k, v in rendered_cfg.items() if k not in moved}
        assert set(cfg["tls"]) == set(rendered_cfg["tls"])
        self.config = tmp_path / "config.toml"
        self.config.write_text(text)

        # Neither the daemon nor the CLI may pick up this machine's settings.
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("STORMLOCK", "RUST_LOG", "XDG_"))}
        self.env.update(HOME=str(self.home), STORMLOCKD_LOG="info", STORMLOCKD_LOG_FORMAT="text")
        self.daemon_env = {**self.env, **(env or {})}
        self.log = tmp_path / "stormlockd.log"
        self.proc: subprocess.Popen | None = None

    def identity(self, name: str) -> tuple[str, ...]:
        return ("--cert", str(self.pki / f"{name}.crt"), "--key", str(self.pki / f"{name}.key"))

    def call(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.cli), "--addr", f"127.0.0.1:{self.port}", "--ca", str(self.pki / "test-ca.crt"),
                               "--timeout", "5s", *args], cwd=self.home, env=self.env, capture_output=True,
                              text=True, timeout=30)

    def log_text(self) -> str:
        return self.log.read_text()

    def __enter__(self) -> "_Daemon":
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(self.daemon), "--config", str(self.config)], cwd=self.home, env=self.daemon_env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, *identity: str) -> None:
        deadline = time.monotonic() + 60
        while True:
            ready = self.call(*identity, "list")
            if ready.returncode == 0:
                return
            assert self.proc.poll() is None, f"stormlockd exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}"
            assert time.monotonic() < deadline, f"stormlockd never answered: {ready.stderr}\n{self.log_text()[-4000:]}"
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        # Stops exactly the process this test started.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_the_daemon_refuses_callers_without_a_client_certificate_on_the_default_config(chart, tmp_path):
    """Runs the real stormlockd on the config.toml of the default release and
    checks that a call without a client certificate, or with one from another
    CA, is refused, while one with a certificate from the client CA succeeds."""
    daemon = _Daemon(render(chart), tmp_path, clients=["e2e-operator"])
    operator = daemon.identity("e2e-operator")
    with daemon:
        daemon.wait_ready(*operator)

        anonymous = daemon.call("list")
        assert anonymous.returncode != 0 and anonymous.stdout == "", anonymous
        assert "client certificate" in anonymous.stderr, anonymous.stderr
        declared = daemon.call("--principal", "e2e-operator", "acquire", "e2e/anonymous")
        assert declared.returncode != 0 and declared.stdout == "", declared
        intruder = daemon.call(*daemon.identity("intruder"), "list")
        assert intruder.returncode != 0 and intruder.stdout == "", intruder

        acquired = daemon.call(*operator, "acquire", "e2e/with-a-certificate")
        assert acquired.returncode == 0, acquired.stderr
        listed = daemon.call(*operator, "list")
        assert listed.returncode == 0, listed.stderr
        (row,) = [line.split() for line in listed.stdout.splitlines()[1:]]
        assert row[:2] == ["e2e/with-a-certificate", "e2e-operator"], "the principal is the certificate's CN"
        assert daemon.proc.poll() is None, "the daemon must survive the refused calls"
        log = daemon.log_text()
        assert 'mode="mutual TLS"' in log
        assert "callers are not authenticated" not in log


def test_the_daemon_makes_the_cert_manager_admin_identity_an_administrator(chart, tmp_path):
    """With cert-manager the chart puts the admin client certificate's CN in
    [auth] admins: the real daemon accepts that config, and a certificate with
    that CN may force-release another principal's lock; an ordinary one may not."""
    rendered = render(chart, CERT_MANAGER)
    (admin,) = [c["spec"]["commonName"] for c in rendered.all("Certificate")
                if c["metadata"]["name"] == f"{RELEASE}-stormlock-admin-client"]
    assert rendered.config["auth"]["admins"] == [admin]
    daemon = _Daemon(rendered, tmp_path, clients=[admin, "e2e-operator"])
    operator = daemon.identity("e2e-operator")
    with daemon:
        daemon.wait_ready(*operator)
        assert daemon.call(*operator, "acquire", "e2e/held").returncode == 0
        denied = daemon.call(*operator, "force-release", "--reason", "e2e", "e2e/held")
        assert denied.returncode == 5, denied
        broken = daemon.call(*daemon.identity(admin), "force-release", "--reason", "e2e", "e2e/held")
        assert broken.returncode == 0, broken
        listed = daemon.call(*operator, "list")
        assert listed.returncode == 0 and "e2e/held" not in listed.stdout, listed


def test_the_daemon_authenticates_chart_tokens_inline_and_from_a_secret(chart, tmp_path):
    """Tokens made with `stormlockd new-token`, one hash inline in the values and
    one from a Secret (the pod's env var, simulated here): the real daemon on
    the rendered config takes both, and refuses a call without a token."""
    secret_env = "STORMLOCK_AUTH_TOKEN_1_SHA256"
    binary, _ = _binaries()
    ci_file, ci_sha = _new_token(binary, tmp_path / "tokens", "ci-deployer")
    ops_file, ops_sha = _new_token(binary, tmp_path / "tokens", "ops-oncall")
    values = merge(CASES["tokens"], {"auth": {"tokens": [
        {"principal": "ci-deployer", "sha256": ci_sha},
        {"principal": "ops-oncall", "sha256Secret": {"name": "stormlock-tokens", "key": "ops-oncall.sha256"}},
    ]}})
    rendered = render(chart, values)
    assert rendered.env()[secret_env]["valueFrom"]["secretKeyRef"]["name"] == "stormlock-tokens"
    assert "client_ca" not in rendered.config["tls"]
    daemon = _Daemon(rendered, tmp_path, clients=[], env={secret_env: ops_sha})
    ci, ops = ("--token-file", str(ci_file)), ("--token-file", str(ops_file))
    with daemon:
        daemon.wait_ready(*ci)
        anonymous = daemon.call("acquire", "e2e/anonymous")
        assert anonymous.returncode == 5 and anonymous.stdout == "", anonymous
        forged = tmp_path / "tokens" / "forged.token"
        forged.touch(mode=0o600)
        forged.write_text("0" * 64 + "\n")
        assert daemon.call("--token-file", str(forged), "list").returncode == 5
        assert daemon.call(*ci, "acquire", "e2e/deploy").returncode == 0
        listed = daemon.call(*ops, "list")
        assert listed.returncode == 0, listed
        (row,) = [line.split() for line in listed.stdout.splitlines()[1:]]
        assert row[:2] == ["e2e/deploy", "ci-deployer"], "the principal is the token's"
        # ops-oncall (config.auth.admins) comes from the Secret's hash: an administrator.
        assert daemon.call(*ci, "force-release", "--reason", "e2e", "e2e/deploy").returncode == 5
        assert daemon.call(*ops, "force-release", "--reason", "e2e", "e2e/deploy").returncode == 0
        assert "callers are not authenticated" not in daemon.log_text()


# --------------------------------------------------------------------------- helm test pod


@pytest.mark.parametrize("case", CASES)
def test_helm_test_pod_probes_the_service_over_tls(chart, case):
    rendered = render(chart, CASES[case])
    pod = rendered.test_pod
    service = rendered.service
    (container,) = pod["spec"]["containers"]
    args = container["args"]
    fqdn = f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    grpc_port = [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"][0]
    assert container["command"] == ["/ko-app/grpc-health-probe"]
    assert f"-addr={fqdn}:{grpc_port}" in args
    assert f"-service={HEALTH_SERVICE}" in args
    assert pod["spec"]["restartPolicy"] == "Never"
    if "tls" in rendered.config:
        # The name the NOTES tell operators to put in their certificates.
        server_name = f"{service['metadata']['name']}.{NAMESPACE}.svc"
        assert "-tls" in args and f"-tls-server-name={server_name}" in args
        assert f"must name {server_name}" in rendered.notes or rendered.all("Certificate")
        for cert in rendered.all("Certificate"):
            if "server auth" in cert["spec"]["usages"]:
                assert server_name in cert["spec"]["dnsNames"]
        ca = [a for a in args if a.startswith("-tls-ca-cert=")][0].split("=", 1)[1]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = {v["name"]: v for v in pod["spec"]["volumes"]}[mounts[ca.rsplit("/", 1)[0]]]
        assert ca.rsplit("/", 1)[1] in {i["path"] for i in volume["secret"]["items"]}
    # The Service and the PodDisruptionBudget select the daemon's pods only.
    selector = rendered.deployment["spec"]["selector"]["matchLabels"]
    labels = pod["metadata"]["labels"]
    assert not all(labels.get(k) == v for k, v in selector.items())


def test_helm_test_can_be_disabled(chart):
    assert render(chart, {"tests": {"enabled": False}}).all("Pod") == []


# --------------------------------------------------------------------------- optional resources


def test_optional_resources_are_off_by_default(chart):
    rendered = render(chart)
    for kind in ("ServiceMonitor", "NetworkPolicy", "HorizontalPodAutoscaler", "Certificate"):
        assert rendered.all(kind) == [], kind
    # One replica (the embedded backend): no PodDisruptionBudget, which could
    # only block drains.
    assert {d["kind"] for d in rendered.docs} == {
        "ConfigMap", "Deployment", "PersistentVolumeClaim", "Pod", "Service", "ServiceAccount"}


def test_service_monitor_scrapes_the_metrics_port(chart):
    rendered = render(chart, CASES["embedded"])
    monitor = rendered.one("ServiceMonitor")
    service = rendered.metrics_service
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "30s")
    assert all(service["metadata"]["labels"][k] == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    client = rendered.service
    assert not all(client["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())


def test_network_policy(chart):
    rendered = render(chart, CASES["redis"])
    policy = rendered.one("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == rendered.deployment["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Ingress"]
    grpc_rule, metrics_rule = policy["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    test_labels = rendered.test_pod["metadata"]["labels"]
    selectors = [p["podSelector"]["matchLabels"] for p in grpc_rule["from"] if "podSelector" in p]
    assert any(all(test_labels.get(k) == v for k, v in s.items()) for s in selectors), "the helm test pod must be allowed"
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    container_ports = {p["name"] for p in rendered.container["ports"]}
    assert {grpc_rule["ports"][0]["port"], metrics_rule["ports"][0]["port"]} <= container_ports
    etcd = render(chart, CASES["etcd"]).one("NetworkPolicy")["spec"]
    assert etcd["policyTypes"] == ["Ingress", "Egress"] and len(etcd["egress"]) == 2


def test_pod_disruption_budget(chart):
    assert render(chart).all("PodDisruptionBudget") == [], "one pod: nothing to keep available"
    pdb = render(chart, CASES["postgres"]).one("PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 1 and "maxUnavailable" not in pdb
    # Unready pods (a backend outage) can be evicted: a drain never hangs on them.
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    shared = merge(REDIS, {"replicaCount": 3})
    pdb = render(chart, shared).one("PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb
    assert render(chart, merge(REDIS, {"replicaCount": 1})).all("PodDisruptionBudget") == []
    assert render(chart, merge(shared, {"podDisruptionBudget": {"enabled": False}})).all("PodDisruptionBudget") == []


def test_dynamodb_uses_the_pod_identity(chart):
    rendered = render(chart, CASES["dynamodb"])
    sa = rendered.one("ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert rendered.pod_spec["serviceAccountName"] == sa["metadata"]["name"]
    assert rendered.config["backends"]["main"] == {"type": "dynamodb", "table": "stormlock-locks",
                                                   "region": "eu-west-1", "create_table": False}


def test_existing_service_account(chart):
    rendered = render(chart, {"serviceAccount": {"create": False, "name": "shared"}})
    assert rendered.all("ServiceAccount") == []
    assert rendered.pod_spec["serviceAccountName"] == "shared"


# --------------------------------------------------------------------------- names and labels


def test_names_fit_in_63_characters(chart):
    long_release = "a-very-long-release-name-that-goes-on-and-on-for-53"
    assert len(long_release) <= 53
    rendered = render(chart, {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}}, name=long_release)
    for doc in rendered.docs:
        name = doc["metadata"]["name"]
        assert len(name) <= 63 and not name.endswith("-"), name
        for value in doc["metadata"]["labels"].values():
            assert len(value) <= 63, value


def test_name_overrides(chart):
    assert render(chart, {"fullnameOverride": "locksvc"}).deployment["metadata"]["name"] == "locksvc"
    assert render(chart, name="stormlock").deployment["metadata"]["name"] == "stormlock"
    assert render(chart).deployment["metadata"]["name"] == f"{RELEASE}-stormlock"


def test_standard_labels(chart):
    rendered = render(chart, {"commonLabels": {"team": "sre"}})
    for doc in rendered.docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "stormlock-0.1.0"
    for doc in rendered.docs:
        if doc["kind"] != "Pod":
            assert doc["metadata"]["labels"]["team"] == "sre"
            assert doc["metadata"]["labels"]["app.kubernetes.io/version"] == "0.1.0"


def test_image_reference(chart):
    assert render(chart).container["image"] == "registry.example.com/stormlock:0.1.0"
    assert render(chart, {"image": {"tag": "1.2.3"}}).container["image"] == "registry.example.com/stormlock:1.2.3"
    digest = "sha256:" + "ab" * 32
    assert render(chart, {"image": {"digest": digest}}).container["image"] == f"registry.example.com/stormlock@{digest}"


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize("values, fragment", [
    ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    ({"image": {"tagg": "1"}}, "additional properties 'tagg' not allowed"),
    ({"tls": {"certManager": {"issuer": "x"}}}, "additional properties 'issuer' not allowed"),
    ({"backends": {"main": {"type": "embedded", "url": "redis://r"}}}, "additional properties 'url' not allowed"),
    ({"backends": {"main": {"type": "redis", "url": "redis://r", "path": "x"}}}, "additional properties 'path' not allowed"),
    ({"config": {"defaults": {"maxTTL": "1d"}}}, "additional properties 'maxTTL' not allowed"),
    ({"replicaCount": "2"}, "/replicaCount"),
    ({"service": {"port": "grpc"}}, "/service/port"),
    ({"tls": {"clientAuth": {"enabled": "yes"}}}, "/tls/clientAuth/enabled"),
    ({"persistence": {"size": 10}}, "/persistence/size"),
    ({"config": {"defaults": {"ttl": 3600}}}, "/config/defaults/ttl"),
    ({"config": {"defaults": {"ttl": "an hour"}}}, "/config/defaults/ttl"),
    ({"backends": {"main": {"type": "cassandra"}}}, "/backends/main/type"),
    ({"backends": {"Main-1": {"type": "memory"}}}, "Main-1"),
    ({"backends": {"main": {"type": "etcd"}}}, "endpoints"),
    ({"backends": {"main": {"type": "postgres", "url": "postgres://pg/x", "table": "locks; drop table x"}}}, "/backends/main/table"),
    ({"containerPorts": {"health": 70000}}, "/containerPorts/health"),
    ({"config": {"log": {"format": "yaml"}}}, "/config/log/format"),
])
def test_schema_rejects_bad_values(chart, values, fragment):
    message = render_error(chart, values)
    assert "schema" in message
    assert fragment in message


def test_defaults_backend_must_exist(chart):
    message = render_error(chart, {"config": {"defaults": {"backend": "shared"}}})
    assert 'config.defaults.backend is "shared", which is not a key of backends (main)' in message
    message = render_error(chart, {"config": {"resources": [{"match": "prod/*", "backend": "nope"}]}})
    assert 'config.resources[0] (match "prod/*") routes to backend "nope"' in message


@pytest.mark.parametrize("which", ["chart", "schemaless_chart"])
def test_https_etcd_needs_its_ca(request, which):
    """stormlockd refuses https:// etcd endpoints without ca_file; the chart
    says so at render time, in the daemon's words."""
    mixed = {"type": "etcd", "endpoints": ["http://etcd-0:2379", "https://etcd-1:2379"], "tls": {"secretName": "c"}}
    message = render_error(request.getfixturevalue(which), {"replicaCount": 2, "backends": {"main": mixed}})
    assert "must be all http:// or all https://" in message
    etcd = {"type": "etcd", "endpoints": ["https://etcd-0:2379", "https://etcd-1:2379"]}
    message = render_error(request.getfixturevalue(which), {"replicaCount": 2, "backends": {"main": etcd}})
    assert "ca_file: required with https:// endpoints" in message and "backends.main.tls.secretName" in message
    without_ca = merge(etcd, {"tls": {"secretName": "etcd-client", "ca": False}})
    assert "ca_file" in render_error(request.getfixturevalue(which), {"replicaCount": 2, "backends": {"main": without_ca}})
    with_ca = render(request.getfixturevalue(which), {"replicaCount": 2, "backends": {"main": merge(etcd, {"tls": {"secretName": "etcd-client"}})}})
    assert with_ca.config["backends"]["main"]["ca_file"] == "/etc/stormlock/backends/main/ca.crt"


@pytest.mark.parametrize("duration", ["500ms", "2w", "1 fortnight"])
def test_durations_the_daemon_refuses_are_refused(chart, duration):
    message = render_error(chart, {"config": {"defaults": {"backendTimeout": duration}}})
    assert "backendTimeout" in message


def test_default_backend_can_be_replaced(chart):
    values = {"backends": {"main": None, "shared": {"type": "etcd", "endpoints": ["http://etcd:2379"]}},
              "config": {"defaults": {"backend": "shared"}}, "replicaCount": 2}
    rendered = render(chart, values)
    assert set(rendered.config["backends"]) == {"shared"}
    assert rendered.deployment["spec"]["replicas"] == 2


# --------------------------------------------------------------------------- values.yaml


def _free_form(schema: dict, path: list[str]) -> bool:
    """Whether the schema leaves path's contents free (a Kubernetes object passed through)."""

    def resolve(node: dict) -> dict:
        return schema["definitions"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node

    node = schema
    for key in path:
        node = resolve(node)
        extra = node.get("additionalProperties")
        if key in node.get("properties", {}):
            node = node["properties"][key]
        elif isinstance(extra, dict):
            node = extra
        else:
            return True
    node = resolve(node)
    return "properties" not in node and not isinstance(node.get("additionalProperties"), dict)


def test_every_values_key_has_a_comment(chart):
    """Each chart key in values.yaml has a comment line right above it; keys inside
    Kubernetes objects passed through as defaults (resources, securityContext)
    are covered by their parent's comment."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9_]*):")
    stack: list[tuple[int, str]] = []
    missing = []
    for i, line in enumerate(lines):
        m = key.match(line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [k for _, k in stack]
        stack.append((indent, m.group(2)))
        if parents and _free_form(chart.schema, parents):
            continue
        if not lines[i - 1].strip().startswith("#"):
            missing.append(f"{i + 1}: {line.strip()}")
    assert missing == []
    assert len([l for l in lines if key.match(l)]) > 100


def test_schema_and_values_describe_the_same_keys(chart):
    schema = chart.schema
    assert schema is not None
    assert schema["additionalProperties"] is False
    documented = set(chart.values)
    assert documented == set(schema["properties"]) - {"global"}


def test_notes(chart):
    notes = render(chart).notes
    assert f"{RELEASE}-stormlock.{NAMESPACE}.svc.cluster.local:7466 (TLS, client certificates required)" in notes
    assert f"helm test {RELEASE}" in notes
    assert "create secret generic" in notes
    assert "Replicas:  1" in notes
    assert "cert-manager issues" in render(chart, CERT_MANAGER).notes
    assert "Replicas:  3" in render(chart, CASES["redis"]).notes


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_matches_the_chart(chart):
    instructions = _dockerfile_instructions()
    stages = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert len(stages) >= 2, "multi-stage build"
    runtime = instructions[stages[-1]:]
    build = instructions[stages[0]:stages[-1]]
    runtime_from = runtime[0][1]
    assert "distroless" in runtime_from and "nonroot" in runtime_from
    build_text = " ".join(rest for _, rest in build)
    assert "protobuf-compiler" in build_text
    assert "cargo build --release --locked" in build_text
    values = chart.values
    exposed = {int(p) for word, rest in runtime if word == "EXPOSE" for p in rest.split()}
    assert exposed == set(values["containerPorts"].values())
    (user,) = [rest for word, rest in runtime if word == "USER"]
    uid, _, gid = user.partition(":")
    assert int(uid) == values["podSecurityContext"]["runAsUser"] == values["securityContext"]["runAsUser"] != 0
    assert int(gid) == values["podSecurityContext"]["runAsGroup"]
    copies = " ".join(rest for word, rest in runtime if word == "COPY")
    assert "stormlockd" in copies and re.search(r"/stormlock\b(?!d)", copies)
    (entrypoint,) = [rest for word, rest in runtime if word == "ENTRYPOINT"]
    assert entrypoint == '["/usr/local/bin/stormlockd"]'
    assert not any(word in ("RUN", "SHELL") for word, _ in runtime), "no shell at run time"


def test_dockerignore_keeps_the_build_inputs():
    patterns = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    assert ".git" in patterns and "**/target" in patterns
    needed = ["Cargo.toml", "Cargo.lock", "build.rs", "proto", "daemon", "cli"]
    for pattern in patterns:
        for path in needed:
            assert not re.fullmatch(pattern.replace("**/", "").replace("*", ".*"), path), (pattern, path)


# --------------------------------------------------------------------------- deploy/


def test_cert_manager_ca_example_matches_the_quick_start():
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "cert-manager-ca.yaml").read_text()) if d]
    certs = [d for d in docs if d["kind"] == "Certificate"]
    issuers = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Issuer"}
    for cert in certs:
        jsonschema.validate(cert, helm_crd_schemas.CERTIFICATE)
        assert cert["spec"]["issuerRef"]["name"] in issuers
    (ca,) = [c for c in certs if c["spec"].get("isCA")]
    # The README installs with tls.certManager.issuerRef.name=stormlock-ca (kind Issuer).
    assert issuers["stormlock-ca"] == {"ca": {"secretName": ca["spec"]["secretName"]}}
    assert "tls.certManager.issuerRef.name=stormlock-ca" in (CHART / "README.md").read_text()


def test_chart_metadata(chart):
    meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["type"] == "application"
    assert meta["kubeVersion"] == ">=1.30.0-0", "native gRPC probes, the preStop sleep action, ReadWriteOncePod"
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert meta["appVersion"] == cargo["workspace"]["package"]["version"], "appVersion follows the workspace version"


# --------------------------------------------------------------------------- values only the daemon used to refuse


def _daemon_refuses(unchecked_chart, values: dict, words: str) -> None:
    """The daemon refuses the same configuration, in the words the chart quotes."""
    rendered = Rendered(unchecked_chart.render(merge(BASE, values), name=RELEASE, namespace=NAMESPACE))
    result = daemon_check(rendered)
    assert result.returncode != 0, rendered.config_text
    assert words in result.stderr, result.stderr


@pytest.mark.parametrize("config, words", [
    ({"defaults": {"ttl": "2d", "maxTtl": "1d"}}, "defaults.max_ttl: 1d is less than the ttl 2d"),
    ({"defaults": {"ttl": "90 min", "maxTtl": "1h"}}, "defaults.max_ttl: 1h is less than the ttl 1h30m"),
    ({"resources": [{"match": "a/*"}, {"match": "prod/*", "ttl": "4h", "maxTtl": "1h"}]},
     "resources[1].max_ttl: 1h is less than the ttl 4h"),
    # No ttl of its own: the rule's maxTtl is compared with config.defaults.ttl.
    ({"defaults": {"ttl": "2h"}, "resources": [{"match": "prod/*", "maxTtl": "1h"}]},
     "resources[0].max_ttl: 1h is less than the ttl 2h"),
])
@pytest.mark.parametrize("which", ["chart", "schemaless_chart"])
def test_a_max_ttl_below_the_ttl_is_refused_in_the_daemons_words(request, unchecked_chart, which, config, words):
    values = {"config": config}
    assert words in render_error(request.getfixturevalue(which), values)
    _daemon_refuses(unchecked_chart, values, words)


def test_a_rule_ttl_above_the_default_max_ttl_raises_its_max(chart):
    """Without a maxTtl of its own a rule's max is max(defaults.maxTtl, its
    ttl) (Router::new), so the daemon takes a ttl above defaults.maxTtl."""
    rendered = render(chart, {"config": {"defaults": {"maxTtl": "1d"},
                                         "resources": [{"match": "batch/*", "ttl": "2d"}]}})
    assert rendered.config["resources"] == [{"match": "batch/*", "ttl": "2d"}]
    render(chart, {"config": {"defaults": {"ttl": "1 hours", "maxTtl": "60m"},
                              "resources": [{"match": "x/*", "ttl": "1d", "maxTtl": "24h"}]}})


@pytest.mark.parametrize("config, schema_path, words", [
    ({"defaults": {"ttl": "0s"}}, "/config/defaults/ttl", "defaults.ttl: must be at least 1s"),
    ({"defaults": {"ttl": "0 days 0m"}}, "/config/defaults/ttl", "defaults.ttl: must be at least 1s"),
    ({"defaults": {"maxTtl": "0d"}}, "/config/defaults/maxTtl", "defaults.max_ttl: 0s is less than the ttl 1h"),
    ({"defaults": {"backendTimeout": "0s"}}, "/config/defaults/backendTimeout",
     "defaults.backend_timeout: must be at least 1s"),
    ({"resources": [{"match": "a/*", "ttl": "0m"}]}, "/config/resources/0/ttl", "resources[0].ttl: must be at least 1s"),
    ({"resources": [{"match": "a/*", "maxTtl": "0s"}]}, "/config/resources/0/maxTtl",
     "resources[0].max_ttl: 0s is less than the ttl 1h"),
])
def test_zero_durations_are_refused(chart, schemaless_chart, unchecked_chart, config, schema_path, words):
    values = {"config": config}
    message = render_error(chart, values)
    assert "schema" in message and schema_path in message, message
    assert words in render_error(schemaless_chart, values)
    _daemon_refuses(unchecked_chart, values, words)


@pytest.mark.parametrize("ports, words", [
    ({"health": 7466}, "containerPorts.health is 7466, the same port as containerPorts.grpc"),
    ({"metrics": 7466}, "containerPorts.metrics is 7466, the same port as containerPorts.grpc"),
    ({"metrics": 9000, "health": 9000}, "containerPorts.health is 9000, the same port as containerPorts.metrics"),
])
@pytest.mark.parametrize("which", ["chart", "schemaless_chart"])
def test_each_listener_needs_a_port_of_its_own(request, which, ports, words):
    message = render_error(request.getfixturevalue(which), {"containerPorts": ports})
    assert words in message and "could not bind" in message


def test_distinct_ports_reach_the_config(chart):
    rendered = render(chart, {"containerPorts": {"grpc": 9000, "metrics": 9001, "health": 9002}})
    cfg = rendered.config
    assert (cfg["listen"], cfg["metrics_listen"], cfg["health_listen"]) == ("0.0.0.0:9000", "0.0.0.0:9001", "0.0.0.0:9002")


@pytest.mark.parametrize("backend, schema_path, words", [
    ({"type": "redis", "url": "redis://r:6379", "prefix": ""}, "/backends/main/prefix",
     'backends.main (redis): prefix: must be 1 to 128 bytes long (default "stormlock:")'),
    ({"type": "redis", "url": "redis://r:6379", "prefix": "x" * 129}, "/backends/main/prefix",
     "backends.main (redis): prefix: must be 1 to 128 bytes long"),
    ({"type": "redis", "url": "redis://r:6379", "prefix": "locks*"}, "/backends/main/prefix",
     """backends.main (redis): prefix: "locks*" contains '*'; control characters, whitespace and *?[]\\{} are not allowed"""),
    ({"type": "redis", "url": "redis://r:6379", "prefix": "my locks:"}, "/backends/main/prefix",
     """prefix: "my locks:" contains ' '; control characters, whitespace"""),
    ({"type": "etcd", "endpoints": ["http://etcd:2379"], "prefix": "/stormlock"}, "/backends/main/prefix",
     'backends.main (etcd): prefix: "/stormlock" must end with "/" and be at most 256 bytes (default "/stormlock/")'),
    ({"type": "etcd", "endpoints": ["http://etcd:2379"], "prefix": ""}, "/backends/main/prefix",
     'backends.main (etcd): prefix: "" must end with "/"'),
    ({"type": "etcd", "endpoints": ["http://etcd:2379"], "prefix": "/" + "x" * 256}, "/backends/main/prefix",
     "must end with \"/\" and be at most 256 bytes"),
])
def test_backend_prefixes_the_daemon_refuses(chart, schemaless_chart, unchecked_chart, backend, schema_path, words):
    values = {"replicaCount": 2, "backends": {"main": backend}}
    message = render_error(chart, values)
    assert "schema" in message and schema_path in message, message
    assert words in render_error(schemaless_chart, values)
    _daemon_refuses(unchecked_chart, values, words.split("): ", 1)[-1])


def test_backend_prefixes_the_daemon_takes(chart):
    rendered = render(chart, {"replicaCount": 2, "backends": {
        "main": {"type": "redis", "url": "redis://r:6379", "prefix": "team-a/locks:"},
        "e": {"type": "etcd", "endpoints": ["http://etcd:2379"], "prefix": "/"}}})
    assert rendered.config["backends"]["main"]["prefix"] == "team-a/locks:"
    assert rendered.config["backends"]["e"]["prefix"] == "/"


WEEKEND = {"name": "weekend", "match": ["deploy/prod/**"], "schedule": "0 17 * * FRI", "duration": "63h",
           "timezone": "Europe/Berlin", "reason": "weekend freeze: ask #ops", "exempt": ["oncall"]}
HOLIDAYS = {"name": "holidays", "match": ["deploy/**", "db/prod/**"], "start": "2026-12-23T18:00:00+01:00",
            "end": "2027-01-04T08:00:00+01:00"}


def test_freezes_are_rendered_as_the_daemon_reads_them(chart):
    rendered = render(chart, {"config": {"freezes": [WEEKEND, HOLIDAYS]}})
    assert rendered.config["freezes"] == [WEEKEND, HOLIDAYS]
    assert "freezes" not in render(chart).config


OPS_SLACK = {"name": "ops-slack", "urlSecret": {"name": "slack-webhook", "key": "url"}, "format": "slack",
             "events": ["force-released", "expired", "waiting"], "match": ["deploy/prod/**"]}
AUDIT_BOT = {"name": "audit-bot", "url": "https://hooks.example.com/stormlock", "format": "json",
             "signingSecret": {"name": "hooks", "key": "secret"}, "events": ["acquired", "released"],
             "timeout": "5s", "attempts": 3, "queue": 50}


def test_notifiers_are_rendered_with_their_secrets_from_the_environment(chart):
    """A Slack URL (its credential) and a signing secret reach the pod as
    secretKeyRefs and the config names them as ${VAR}: neither is in the
    ConfigMap. The daemon accepts what is rendered."""
    rendered = render(chart, {"config": {"notify": [OPS_SLACK, AUDIT_BOT]}})
    assert rendered.config["notify"] == [
        {"name": "ops-slack", "url": "${STORMLOCK_NOTIFY_0_URL}", "format": "slack",
         "events": ["force-released", "expired", "waiting"], "match": ["deploy/prod/**"]},
        {"name": "audit-bot", "url": "https://hooks.example.com/stormlock", "format": "json",
         "events": ["acquired", "released"], "secret": "${STORMLOCK_NOTIFY_1_SECRET}", "timeout": "5s",
         "attempts": 3, "queue": 50},
    ]
    env = rendered.env()
    assert env["STORMLOCK_NOTIFY_0_URL"]["valueFrom"]["secretKeyRef"] == {"name": "slack-webhook", "key": "url"}
    assert env["STORMLOCK_NOTIFY_1_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "hooks", "key": "secret"}
    assert "STORMLOCK_NOTIFY_0_SECRET" not in env and "STORMLOCK_NOTIFY_1_URL" not in env
    result = daemon_check(rendered)
    assert result.returncode == 0, result.stderr + rendered.config_text
    assert "notify" not in render(chart).config


@pytest.mark.parametrize("notifier, schema_path", [
    ({"name": "n", "events": ["acquired"]}, "/config/notify/0"),
    ({"name": "n", "url": "https://h/x", "urlSecret": {"name": "a", "key": "b"}, "events": ["acquired"]},
     "/config/notify/0"),
    ({"name": "n", "url": "https://user:pw@h/x", "events": ["acquired"]}, "/config/notify/0/url"),
    ({"name": "n", "url": "ftp://h/x", "events": ["acquired"]}, "/config/notify/0/url"),
    ({"name": "n", "url": "https://h/x", "events": []}, "/config/notify/0/events"),
    ({"name": "n", "url": "https://h/x", "events": ["acquire"]}, "/config/notify/0/events/0"),
    ({"name": "n", "url": "https://h/x", "format": "slack", "signingSecret": {"name": "a", "key": "b"},
      "events": ["acquired"]}, "/config/notify/0"),
    ({"name": "n n", "url": "https://h/x", "events": ["acquired"]}, "/config/notify/0/name"),
    ({"name": "n", "url": "https://h/x", "events": ["acquired"], "attempts": 0}, "/config/notify/0/attempts"),
])
def test_the_schema_refuses_malformed_notifiers(chart, notifier, schema_path):
    message = render_error(chart, {"config": {"notify": [notifier]}})
    assert "schema" in message and schema_path in message, message


@pytest.mark.parametrize("freeze, schema_path", [
    ({"name": "w", "match": ["x"], "schedule": "0 17 * * FRI"}, "/config/freezes/0"),
    ({"name": "w", "match": ["x"], "schedule": "0 17 * * FRI", "duration": "1h", "start": "2026-12-23T18:00:00Z"},
     "/config/freezes/0"),
    ({"name": "w", "match": ["x"], "start": "2026-12-23 18:00", "duration": "1h"}, "/config/freezes/0/start"),
    ({"name": "w", "match": [], "start": "2026-12-23T18:00:00Z", "duration": "1h"}, "/config/freezes/0/match"),
    ({"name": "w w", "match": ["x"], "start": "2026-12-23T18:00:00Z", "duration": "1h"}, "/config/freezes/0/name"),
    ({"name": "w", "match": ["x"], "schedule": "0 17 * FRI", "duration": "1h"}, "/config/freezes/0/schedule"),
    ({"name": "w", "match": ["x"], "schedule": "0 17 * * FRI", "duration": "0h"}, "/config/freezes/0/duration"),
])
def test_the_schema_refuses_malformed_freezes(chart, freeze, schema_path):
    message = render_error(chart, {"config": {"freezes": [freeze]}})
    assert "schema" in message and schema_path in message, message


@pytest.mark.parametrize("freeze, words", [
    ({"name": "w", "match": ["x"], "schedule": "0 25 * * *", "duration": "1h"}, "is not a cron schedule"),
    ({"name": "w", "match": ["x"], "schedule": "0 17 * * FRI", "duration": "1h", "timezone": "Europe/Berln"},
     "not an IANA time zone"),
    ({"name": "w", "match": ["x"], "start": "2026-12-23T18:00:00Z", "end": "2026-12-22T18:00:00Z"},
     "is before start"),
])
def test_the_daemon_refuses_what_the_schema_cannot_check(schemaless_chart, freeze, words):
    """Cron fields, zone names and the order of start and end are the
    daemon's to check: the rendered config is refused by check-config."""
    rendered = Rendered(schemaless_chart.render(merge(BASE, {"config": {"freezes": [freeze]}}), name=RELEASE,
                                                namespace=NAMESPACE, is_install=True))
    result = daemon_check(rendered)
    assert result.returncode != 0, rendered.config_text
    assert words in result.stderr and 'freeze "w"' in result.stderr, result.stderr
