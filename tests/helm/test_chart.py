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
import pathlib
import re
import shutil
import subprocess
import sys
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
CASES = {"default": {}} | {p.name.removesuffix("-values.yaml"): yaml.safe_load(p.read_text()) for p in CI_FILES}

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
    return Rendered(chart.render(values or {}, name=name, namespace=NAMESPACE, is_install=True))


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


def render_error(chart, values: dict) -> str:
    with pytest.raises(helm_python.HelmError) as raised:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return str(raised.value)


REDIS = {"backends": {"main": {"type": "redis", "urlSecret": {"name": "redis-cred", "key": "url"}}}}
CERT_MANAGER = {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca-issuer"}}}}


# --------------------------------------------------------------------------- coverage of the ci values


def test_ci_values_cover_every_required_setup():
    types = {n: {b["type"] for b in (v.get("backends") or {}).values() if b} for n, v in CASES.items()}
    cert_manager = {n for n, v in CASES.items() if v.get("tls", {}).get("certManager", {}).get("enabled")}
    for needed in ["embedded", "redis", "postgres", "etcd"]:
        assert any(needed in t for n, t in types.items() if n != "default"), f"no ci values use {needed}"
    assert cert_manager, "no ci values use cert-manager"
    assert set(CASES) - cert_manager - {"default"}, "no ci values use an existing TLS Secret"


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
    assert set(cfg) <= {"listen", "metrics_listen", "health_listen", "data_dir", "tls", "auth", "defaults", "backends", "resources"}, "only keys of the daemon's contract"
    assert set(cfg["defaults"]) == {"ttl", "max_ttl", "backend", "backend_timeout"}
    assert cfg["defaults"]["backend"] in cfg["backends"]
    for rule in cfg.get("resources", []):
        assert set(rule) <= {"match", "backend", "ttl", "max_ttl"}
        assert rule.get("backend", cfg["defaults"]["backend"]) in cfg["backends"]
    allowed = {
        "embedded": {"path"}, "memory": set(), "redis": {"url", "prefix"},
        "postgres": {"url", "table", "create_table", "pool_size"},
        "mysql": {"url", "table", "create_table", "pool_size"},
        "etcd": {"endpoints", "username", "password", "ca_file", "cert_file", "key_file", "prefix"},
        "dynamodb": {"table", "region", "endpoint", "create_table"},
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
    assert cfg["tls"] == {"cert": "/etc/stormlock/tls/tls.crt", "key": "/etc/stormlock/tls/tls.key"}
    assert cfg["auth"] == {"admins": []}


def test_extra_toml_is_appended(chart):
    extra = '[[acl]]\nprincipals = ["ci-*"]\nresources = ["ci/*"]\nactions = ["acquire", "release"]\n'
    rendered = render(chart, {"config": {"extraToml": extra}})
    assert rendered.config["acl"] == [{"principals": ["ci-*"], "resources": ["ci/*"], "actions": ["acquire", "release"]}]
    assert rendered.config["backends"] == render(chart).config["backends"]


def test_config_values_reach_the_toml(chart):
    values = {
        "config": {
            "auth": {"admins": ["ops-admin", 'odd "quoted" \\ <name> &co']},
            "defaults": {"ttl": "30m", "maxTtl": "7d", "backend": "main", "backendTimeout": "500ms"},
            "resources": [{"match": "prod/*", "ttl": "4h", "maxTtl": "1d"}],
        },
        "backends": {"main": {"type": "embedded", "path": "other.redb"}},
        "bindAddress": "[::]",
    }
    cfg = render(chart, values).config
    assert cfg["auth"]["admins"] == ["ops-admin", 'odd "quoted" \\ <name> &co']
    assert cfg["defaults"] == {"ttl": "30m", "max_ttl": "7d", "backend": "main", "backend_timeout": "500ms"}
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


def test_service_exposes_grpc_and_metrics_but_not_health(chart):
    rendered = render(chart, {"service": {"port": 443, "metricsPort": 9100}})
    ports = {p["name"]: p for p in rendered.one("Service")["spec"]["ports"]}
    assert set(ports) == {"grpc", "http-metrics"}
    assert (ports["grpc"]["port"], ports["grpc"]["targetPort"], ports["grpc"]["appProtocol"]) == (443, "grpc", "grpc")
    assert (ports["http-metrics"]["port"], ports["http-metrics"]["targetPort"]) == (9100, "metrics")
    container_ports = {p["name"] for p in rendered.container["ports"]}
    assert {ports["grpc"]["targetPort"], ports["http-metrics"]["targetPort"]} <= container_ports
    assert rendered.one("Service")["spec"]["selector"] == rendered.deployment["spec"]["selector"]["matchLabels"]


# --------------------------------------------------------------------------- security context


@pytest.mark.parametrize("case", CASES)
def test_restricted_security_context(chart, case):
    rendered = render(chart, CASES[case])
    pod = rendered.pod_spec
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
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
        "etcd": {"type": "etcd", "endpoints": ["https://etcd:2379"]},
        "dynamodb": {"type": "dynamodb", "table": "locks"},
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
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "storageClassName" not in pvc["spec"]
    for case in ("redis", "postgres", "etcd", "dynamodb", "insecure"):
        other = render(chart, CASES[case])
        assert other.all("PersistentVolumeClaim") == [], case
        assert other.volume("data") == {"name": "data", "emptyDir": {}}, case


def test_pvc_settings(chart):
    rendered = render(chart, {"persistence": {"storageClass": "fast", "size": "5Gi", "keepOnUninstall": False,
                                              "accessModes": ["ReadWriteOncePod"]}})
    pvc = rendered.one("PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] == "fast"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOncePod"]
    assert "helm.sh/resource-policy" not in (pvc["metadata"].get("annotations") or {})
    assert render(chart, {"persistence": {"storageClass": "-"}}).one("PersistentVolumeClaim")["spec"]["storageClassName"] == ""


def test_existing_claim_and_disabled_persistence(chart):
    rendered = render(chart, {"persistence": {"existingClaim": "my-locks"}})
    assert rendered.all("PersistentVolumeClaim") == []
    assert rendered.volume("data")["persistentVolumeClaim"]["claimName"] == "my-locks"
    rendered = render(chart, {"persistence": {"enabled": False}})
    assert rendered.all("PersistentVolumeClaim") == []
    assert rendered.volume("data") == {"name": "data", "emptyDir": {}}
    assert "lost whenever the pod is replaced" in rendered.notes


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


def test_etcd_tls_files_are_mounted_where_the_config_points(chart):
    rendered = render(chart, CASES["etcd"])
    backend = rendered.config["backends"]["main"]
    mount = rendered.mount("backend-main-tls")["mountPath"]
    items = {i["path"] for i in rendered.volume("backend-main-tls")["secret"]["items"]}
    for key in ("ca_file", "cert_file", "key_file"):
        directory, filename = backend[key].rsplit("/", 1)
        assert directory == mount and filename in items
    assert rendered.volume("backend-main-tls")["secret"]["secretName"] == "stormlock-etcd-client"
    only_ca = render(chart, {"backends": {"main": {"type": "etcd", "endpoints": ["https://e:2379"],
                                                   "tls": {"secretName": "etcd-ca"}}}})
    assert set(only_ca.config["backends"]["main"]) == {"type", "endpoints", "ca_file"}


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
    assert checksum({"tls": {"clientAuth": {"enabled": True}}, "tests": {"enabled": False}}) != base
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
    (cert,) = rendered.all("Certificate")
    spec = cert["spec"]
    assert spec["issuerRef"] == {"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert spec["secretName"] == rendered.volume("tls")["secret"]["secretName"]
    fullname = rendered.one("Service")["metadata"]["name"]
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
    assert "client_ca" not in render(chart).config["tls"]


def test_mutual_tls_with_cert_manager_issues_the_test_client_certificate(chart):
    rendered = render(chart, CASES["etcd"])
    certs = {c["metadata"]["name"]: c["spec"] for c in rendered.all("Certificate")}
    client = certs[f"{RELEASE}-stormlock-test-client"]
    assert client["usages"] == ["client auth", "digital signature"]
    assert client["issuerRef"]["name"] == "stormlock-ca"
    volumes = {v["name"]: v for v in rendered.test_pod["spec"]["volumes"]}
    assert volumes["client"]["secret"]["secretName"] == client["secretName"]


def test_mutual_tls_without_a_test_client_certificate_is_refused(chart):
    message = render_error(chart, {"tls": {"clientAuth": {"enabled": True}}})
    assert "tests.tls.clientSecretName" in message
    assert render(chart, {"tls": {"clientAuth": {"enabled": True}}, "tests": {"enabled": False}}).all("Pod") == []


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


# --------------------------------------------------------------------------- helm test pod


@pytest.mark.parametrize("case", CASES)
def test_helm_test_pod_probes_the_service_over_tls(chart, case):
    rendered = render(chart, CASES[case])
    pod = rendered.test_pod
    service = rendered.one("Service")
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
    assert {d["kind"] for d in rendered.docs} == {
        "ConfigMap", "Deployment", "PersistentVolumeClaim", "PodDisruptionBudget", "Pod", "Service", "ServiceAccount"}


def test_service_monitor_scrapes_the_metrics_port(chart):
    rendered = render(chart, CASES["embedded"])
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "30s")
    assert all(service["metadata"]["labels"][k] == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


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
    pdb = render(chart).one("PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb
    pdb = render(chart, CASES["postgres"]).one("PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 1 and "maxUnavailable" not in pdb
    assert render(chart, {"podDisruptionBudget": {"enabled": False}}).all("PodDisruptionBudget") == []


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
    assert render(chart).container["image"] == "ghcr.io/stormlock/stormlock:0.1.0"
    assert render(chart, {"image": {"tag": "1.2.3"}}).container["image"] == "ghcr.io/stormlock/stormlock:1.2.3"
    digest = "sha256:" + "ab" * 32
    assert render(chart, {"image": {"digest": digest}}).container["image"] == f"ghcr.io/stormlock/stormlock@{digest}"


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


def test_default_backend_can_be_replaced(chart):
    values = {"backends": {"main": None, "shared": {"type": "etcd", "endpoints": ["https://etcd:2379"]}},
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
    assert f"{RELEASE}-stormlock.{NAMESPACE}.svc.cluster.local:7466 (TLS)" in notes
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
    assert meta["kubeVersion"] == ">=1.27.0-0", "native gRPC probes are GA from 1.27"
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert meta["appVersion"] == cargo["workspace"]["package"]["version"], "appVersion follows the workspace version"
