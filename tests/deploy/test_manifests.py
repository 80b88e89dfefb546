"""deploy/, Dockerfile and docker-compose.yml, checked offline against the code they run.

The kustomize base, the production overlay and that overlay with the optional tracing
component are rendered by a small renderer (`kustomize.py`), every object is validated
against the Kubernetes OpenAPI schema of a pinned version (kubernetes-validate, strict:
unknown fields fail), and the KEDA ScaledObject (a CRD, not in that schema) is checked by
hand. Then the manifests are held to what the code does: probe services the health
servicer serves, ports and environment variables the settings read, the security context
every container must have, the network each component may reach, and who may scrape
metrics or receive traces.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from sandmesh_db.pool import DatabaseSettings
from sandmesh_queue import subjects
from sandmesh_queue.streams import QueueSettings
from sandmesh_runtime.bootstrap import RuntimeSettings
from sandmesh_runtime.health import LIVENESS, READINESS
from services.browser_pool.settings import BrowserPoolSettings
from services.executor.settings import ExecutorSettings
from services.gateway.settings import GatewaySettings
from services.scheduler.settings import SchedulerSettings
from tests.deploy.kustomize import (
    Object,
    load_documents,
    load_kustomization,
    merge,
    pod_spec,
    render,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
PRODUCTION = DEPLOY / "overlays" / "production"
TRACING = DEPLOY / "components" / "tracing"
# What deploy/README.md tells an overlay to add to turn tracing on.
TRACING_ENTRY = "../../components/tracing"

KUBERNETES_VERSION = "1.33.0"
NAMESPACE = "sandmesh"

# component -> (command, the settings classes it reads: its own, then shared ones)
SERVICES: dict[str, tuple[str, tuple[type[Any], ...]]] = {
    "gateway": ("sandmesh-gateway", (GatewaySettings, QueueSettings, DatabaseSettings)),
    "scheduler": ("sandmesh-scheduler", (SchedulerSettings, QueueSettings, DatabaseSettings)),
    "executor": ("sandmesh-executor", (ExecutorSettings, QueueSettings)),
    "browser-pool": ("sandmesh-browser-pool", (BrowserPoolSettings,)),
}
COMMAND_TO_COMPONENT = {command: component for component, (command, _) in SERVICES.items()}
# Components that run bubblewrap: the executor's sandboxes, the browser pool's jails.
SANDBOXES = frozenset({"executor", "browser-pool"})
EXTRA_ENV: dict[str, set[str]] = {
    "scheduler": set(),
    "executor": set(),
    "gateway": set(),
    # Playwright's driver wants a writable HOME; the root filesystem is read-only.
    "browser-pool": {"HOME"},
}
GRPC_HEALTH_SERVICES = {"", LIVENESS, READINESS}

# Every service serves Prometheus metrics here; only namespace `monitoring` may scrape them.
METRICS_PORT = 9090
SCRAPER = ("ns:monitoring", METRICS_PORT)
# The tracing component: where spans go, and the one egress it opens for them.
OTLP_ENDPOINT = "http://otel-collector.observability:4317"
OTLP_POLICY = "otlp-egress"
COLLECTOR = ("ns:observability", 4317)

# What no browser may reach: private and cluster ranges, loopback, link-local (metadata).
FORBIDDEN_FOR_BROWSERS = [
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "169.254.169.254/32",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
]
FORBIDDEN_PATHS = ("/work", "/tmp/v2", "/root")


def env_names(*classes: type[Any]) -> set[str]:
    return {
        f.metadata["env"]
        for settings in classes
        for f in dataclasses.fields(settings)
        if "env" in f.metadata
    }


def loopback_defaults(classes: tuple[type[Any], ...]) -> set[str]:
    """Settings whose default points at this machine: wrong in any container, must be set."""
    return {
        f.metadata["env"]
        for settings in classes
        for f in dataclasses.fields(settings)
        if "env" in f.metadata and "127.0.0.1" in str(f.default)
    }


def port_default(classes: tuple[type[Any], ...]) -> int:
    (port,) = (f.default for f in dataclasses.fields(classes[0]) if f.name == "port")
    assert isinstance(port, int)
    return port


def known_env(component: str) -> set[str]:
    return env_names(*SERVICES[component][1], RuntimeSettings) | EXTRA_ENV[component]


# ------------------------------------------------------------------------------- rendering


RENDERED: dict[str, list[Object]] = {}


def rendered(name: str) -> list[Object]:
    if name not in RENDERED:
        if name == "base":
            RENDERED[name] = render(BASE)
        elif name == "production":
            RENDERED[name] = render(PRODUCTION)
        elif name == "production-tracing":  # the overlay with the line the README documents
            kustomization = load_kustomization(PRODUCTION)
            assert "components" not in kustomization, "tracing is opt-in"
            RENDERED[name] = render(PRODUCTION, {**kustomization, "components": [TRACING_ENTRY]})
        else:  # production with the optional gVisor patch
            objects = render(PRODUCTION)
            (patch,) = load_documents(PRODUCTION / "executor-gvisor.yaml")
            RENDERED[name] = [
                merge(o, patch)
                if (o["kind"], o["metadata"]["name"]) == ("Deployment", "executor")
                else o
                for o in objects
            ]
    return RENDERED[name]


VARIANTS = ["base", "production", "production-gvisor", "production-tracing"]


@pytest.fixture(params=VARIANTS)
def objects(request: pytest.FixtureRequest) -> list[Object]:
    return rendered(request.param)


def find(objects: list[Object], kind: str, name: str) -> Object:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def containers(objects: list[Object]) -> Iterator[tuple[Object, Object, Object]]:
    """(workload, pod spec, container) for every container of every workload."""
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            for container in [*spec.get("initContainers", []), *spec["containers"]]:
                yield obj, spec, container


def service_container(objects: list[Object], component: str) -> tuple[Object, Object]:
    deployment = find(objects, "Deployment", component)
    spec = pod_spec(deployment)
    assert spec is not None
    (container,) = spec["containers"]
    return spec, container


# ------------------------------------------------------------------------------ the schema


@pytest.mark.parametrize("variant", ["base", "production", "production-tracing"])
def test_every_object_is_valid_for_the_pinned_kubernetes(variant: str) -> None:
    checked = 0
    for obj in rendered(variant):
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: test_keda_scales_executors_on_jetstream_lag
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 25
    # The gVisor variant differs from production in the executor's Deployment only.
    executor = find(rendered("production-gvisor"), "Deployment", "executor")
    kubernetes_validate.validate(executor, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_what_it_should() -> None:
    deployment = merge(
        find(rendered("base"), "Deployment", "executor"),
        {"spec": {"template": {"spec": {"containers": [{"name": "executor", "procMount": 1}]}}}},
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_objects_are_unique_and_namespaced(objects: list[Object]) -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys))
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
    find(objects, "Namespace", NAMESPACE)


def test_production_pins_the_image() -> None:
    for _, _, container in containers(rendered("production")):
        if container["name"] != "nats":
            assert re.fullmatch(r"[\w./-]+/sandmesh:\d+\.\d+\.\d+", container["image"])


# ------------------------------------------------------------------ services and their probes


@pytest.mark.parametrize("component", SERVICES)
def test_service_runs_its_command_on_its_port(objects: list[Object], component: str) -> None:
    command, settings = SERVICES[component]
    _, container = service_container(objects, component)
    assert container["command"] == [command]
    port = port_default(settings)
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("grpc", port),
        ("metrics", METRICS_PORT),
    ]
    env = {e["name"]: e for e in container.get("env", [])}
    (port_var,) = (f.metadata["env"] for f in dataclasses.fields(settings[0]) if f.name == "port")
    if port_var in env:
        assert env[port_var]["value"] == str(port)
    service = find(objects, "Service", component)
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(port, port)]
    labels = find(objects, "Deployment", component)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


@pytest.mark.parametrize("component", SERVICES)
def test_grpc_probes_ask_what_the_health_servicer_serves(
    objects: list[Object], component: str
) -> None:
    _, container = service_container(objects, component)
    port = container["ports"][0]["containerPort"]
    expected = {"startupProbe": LIVENESS, "livenessProbe": LIVENESS, "readinessProbe": READINESS}
    for probe_name, service in expected.items():
        probe = container[probe_name]
        assert set(probe) - {
            "periodSeconds",
            "timeoutSeconds",
            "failureThreshold",
            "successThreshold",
            "initialDelaySeconds",
        } == {"grpc"}, f"{component} {probe_name} is not a native gRPC probe"
        assert probe["grpc"]["service"] in GRPC_HEALTH_SERVICES
        assert probe["grpc"]["service"] == service
        assert probe["grpc"]["port"] == port


@pytest.mark.parametrize("component", SERVICES)
def test_metrics_port_is_served_declared_and_scraped(objects: list[Object], component: str) -> None:
    _, container = service_container(objects, component)
    env = {e["name"]: e.get("value") for e in container["env"]}
    (declared,) = [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"]
    assert env["SANDMESH_METRICS_PORT"] == str(declared)
    assert declared == METRICS_PORT  # the port the `metrics` NetworkPolicy opens
    pod = find(objects, "Deployment", component)["spec"]["template"]["metadata"]
    assert pod["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(declared),
        "prometheus.io/path": "/metrics",
    }
    # Scraped per pod: the Service neither carries the port nor asks for a second scrape.
    service = find(objects, "Service", component)
    assert declared not in [p["port"] for p in service["spec"]["ports"]]
    assert not any(
        k.startswith("prometheus.io/") for k in service["metadata"].get("annotations", {})
    )


def test_streams_are_replicated_on_every_nats_node(objects: list[Object]) -> None:
    nats_nodes = find(objects, "StatefulSet", "nats")["spec"]["replicas"]
    declared = {}
    for component in ("gateway", "scheduler", "executor"):
        _, container = service_container(objects, component)
        env = {e["name"]: e.get("value") for e in container["env"]}
        declared[component] = int(env["SANDMESH_STREAM_REPLICAS"])
    assert set(declared.values()) == {nats_nodes}, (declared, nats_nodes)
    QueueSettings(replicas=nats_nodes)  # a value the services accept


@pytest.mark.parametrize("component", SERVICES)
def test_env_is_what_the_service_reads(objects: list[Object], component: str) -> None:
    _, container = service_container(objects, component)
    env = {e["name"]: e for e in container.get("env", [])}
    assert set(env) <= known_env(component), set(env) - known_env(component)
    assert "envFrom" not in container
    settings = SERVICES[component][1]
    assert loopback_defaults(settings) <= set(env), "a 127.0.0.1 default left in a pod"
    for name, entry in env.items():
        if name == "DATABASE_URL":
            assert entry["valueFrom"] == {
                "secretKeyRef": {"name": "sandmesh-database", "key": "url"}
            }
        value = entry.get("value", "")
        target = re.fullmatch(r"(?:nats://)?([a-z-]+):(\d+)", value)
        if target:
            host, port = target.group(1), int(target.group(2))
            ports = [p["port"] for p in find(objects, "Service", host)["spec"]["ports"]]
            assert port in ports, f"{name}={value}: Service {host} has ports {ports}"


def test_migration_job(objects: list[Object]) -> None:
    job = find(objects, "Job", "sandmesh-migrate")
    spec = pod_spec(job)
    assert spec is not None
    (container,) = spec["containers"]
    assert container["command"] == ["sandmesh", "migrate", "up"]
    assert container["env"] == [
        {
            "name": "DATABASE_URL",
            "valueFrom": {"secretKeyRef": {"name": "sandmesh-database", "key": "url"}},
        }
    ]


# -------------------------------------------------------------------------------- security


def test_every_container_is_non_root_read_only_and_bounded(objects: list[Object]) -> None:
    seen = set()
    for workload, spec, container in containers(objects):
        name = f"{workload['kind']}/{workload['metadata']['name']}/{container['name']}"
        seen.add(workload["metadata"]["name"])
        pod_sc = spec.get("securityContext", {})
        sc = container.get("securityContext", {})
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, name
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"] == {"drop": ["ALL"]}, name
        assert "privileged" not in sc, name
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile"))
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        if workload["metadata"]["name"] not in SANDBOXES:
            assert seccomp == {"type": "RuntimeDefault"}, name
            assert "procMount" not in sc and "appArmorProfile" not in sc, name
            assert "hostUsers" not in spec, name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), name
        assert spec.get("automountServiceAccountToken") is False, name
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), name
    assert {*SERVICES, "nats", "sandmesh-migrate"} <= seen


@pytest.mark.parametrize("component", sorted(SANDBOXES))
def test_sandboxes_deviate_only_where_bubblewrap_needs_it(
    objects: list[Object], component: str
) -> None:
    spec, container = service_container(objects, component)
    sc = container["securityContext"]
    # bwrap: user namespaces (blocked by RuntimeDefault seccomp without CAP_SYS_ADMIN), mount
    # (denied by the runtime's default AppArmor profile) and a fresh /proc (only on an
    # unmasked one, which needs a pod user namespace).
    assert sc["seccompProfile"] == {"type": "Unconfined"}
    assert sc["appArmorProfile"] == {"type": "Unconfined"}
    assert sc["procMount"] == "Unmasked"
    assert spec["hostUsers"] is False
    assert set(sc) == {
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "capabilities",
        "procMount",
        "seccompProfile",
        "appArmorProfile",
    }


def test_executor_concurrency_follows_its_cpu_limit(objects: list[Object]) -> None:
    _, container = service_container(objects, "executor")
    # os.cpu_count() is the node's: concurrency follows the CPU limit instead.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SANDMESH_EXECUTOR_CONCURRENCY"] == str(container["resources"]["limits"]["cpu"])


def test_gvisor_only_in_the_optional_overlay_patch() -> None:
    for variant, expected in (("base", None), ("production", None)):
        spec, _ = service_container(rendered(variant), "executor")
        assert spec.get("runtimeClassName") == expected
    spec, _ = service_container(rendered("production-gvisor"), "executor")
    assert spec["runtimeClassName"] == "gvisor"


def test_read_only_roots_get_a_writable_tmp(objects: list[Object]) -> None:
    for workload, spec, container in containers(objects):
        if container["name"] == "nats":
            continue
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, workload["metadata"]["name"]
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert "sizeLimit" in volumes[mounts["/tmp"]]["emptyDir"]


# ------------------------------------------------------------------------- network policies


def selects(selector: Object, labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def pod_labels(objects: list[Object]) -> dict[str, dict[str, str]]:
    labels: dict[str, dict[str, str]] = {}
    for obj in objects:
        if pod_spec(obj) is not None:
            pod: dict[str, str] = obj["spec"]["template"]["metadata"]["labels"]
            labels[pod["app.kubernetes.io/component"]] = pod
    return labels


def rules(objects: list[Object], component: str, direction: str) -> list[Object]:
    """Every ingress or egress rule that applies to `component`'s pods."""
    labels = pod_labels(objects)[component]
    found: list[Object] = []
    key = "egress" if direction == "Egress" else "ingress"
    for policy in objects:
        if policy["kind"] != "NetworkPolicy":
            continue
        if selects(policy["spec"]["podSelector"], labels):
            assert direction in policy["spec"]["policyTypes"] or key not in policy["spec"]
            found += policy["spec"].get(key, [])
    return found


def peers(rule: Object, direction: str) -> list[Object]:
    return list(rule.get("to" if direction == "Egress" else "from", []))


def is_dns(rule: Object) -> bool:
    ports = {(p["protocol"], p["port"]) for p in rule.get("ports", [])}
    return ports == {("UDP", 53), ("TCP", 53)} and all(
        peer.get("podSelector") == {"matchLabels": {"k8s-app": "kube-dns"}}
        for peer in peers(rule, "Egress")
    )


def namespace_of(peer: Object) -> str:
    """'ns:<name>' for a peer that is a whole namespace, picked by its name label."""
    assert set(peer) == {"namespaceSelector"}, peer
    selector = peer["namespaceSelector"]
    assert set(selector) == {"matchLabels"}, peer
    ((key, name),) = selector["matchLabels"].items()
    assert key == "kubernetes.io/metadata.name", peer
    return f"ns:{name}"


def admitted(objects: list[Object], component: str) -> set[tuple[str, int]]:
    """(peer component, 'ns:<namespace>' or 'any', port) pairs that may connect to
    `component`."""
    labels = pod_labels(objects)
    out: set[tuple[str, int]] = set()
    for rule in rules(objects, component, "Ingress"):
        ports = [p["port"] for p in rule.get("ports", [])]
        assert ports, f"{component}: an ingress rule without ports"
        sources = peers(rule, "Ingress")
        names = ["any"] if not sources else []
        for peer in sources:
            if "namespaceSelector" in peer:
                names.append(namespace_of(peer))
                continue
            assert set(peer) == {"podSelector"}, f"{component}: ingress beyond pods: {peer}"
            names += [c for c, lab in labels.items() if selects(peer["podSelector"], lab)]
        out |= {(name, port) for name in names for port in ports}
    return out


def otlp(objects: list[Object]) -> set[tuple[str, int]]:
    """What the tracing component lets the services reach: the collector, if it is there."""
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "NetworkPolicy"}
    return {COLLECTOR} if OTLP_POLICY in names else set()


def reached(objects: list[Object], component: str) -> set[tuple[str, int]]:
    """(peer component, 'ns:<namespace>', 'cidr:<range>' or 'any', port) pairs `component`
    may reach, no DNS."""
    labels = pod_labels(objects)
    out: set[tuple[str, int]] = set()
    for rule in rules(objects, component, "Egress"):
        if is_dns(rule):
            continue
        ports = [p["port"] for p in rule.get("ports", [])]
        assert ports, f"{component}: an egress rule without ports"
        targets = peers(rule, "Egress")
        names = ["any"] if not targets else []
        for peer in targets:
            if "ipBlock" in peer:
                assert set(peer) == {"ipBlock"} and "except" not in peer["ipBlock"]
                names.append(f"cidr:{peer['ipBlock']['cidr']}")
                continue
            if "namespaceSelector" in peer:
                names.append(namespace_of(peer))
                continue
            assert set(peer) == {"podSelector"}, f"{component}: egress beyond pods: {peer}"
            names += [c for c, lab in labels.items() if selects(peer["podSelector"], lab)]
        out |= {(name, port) for name in names for port in ports}
    return out


def test_default_deny_and_a_policy_per_component(objects: list[Object]) -> None:
    deny = find(objects, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for component in [*SERVICES, "nats"]:
        policy = find(objects, "NetworkPolicy", component)["spec"]
        assert policy["podSelector"] == {"matchLabels": {"app.kubernetes.io/component": component}}
        assert policy["policyTypes"] == ["Ingress", "Egress"]


def test_executors_reach_only_nats(objects: list[Object]) -> None:
    assert reached(objects, "executor") == {("nats", 4222)} | otlp(objects)
    assert admitted(objects, "executor") == {("gateway", 50053), SCRAPER}


def postgres(objects: list[Object]) -> set[tuple[str, int]]:
    """Where `postgres-egress` lets its pods reach Postgres: port 5432 and nothing else."""
    (rule,) = find(objects, "NetworkPolicy", "postgres-egress")["spec"]["egress"]
    assert [p["port"] for p in rule["ports"]] == [5432]
    blocks = [peer["ipBlock"]["cidr"] for peer in rule.get("to", [])]
    return {(f"cidr:{b}", 5432) for b in blocks} if blocks else {("any", 5432)}


def test_scheduler_reaches_nats_and_postgres(objects: list[Object]) -> None:
    assert reached(objects, "scheduler") == {("nats", 4222)} | postgres(objects) | otlp(objects)
    assert admitted(objects, "scheduler") == {("gateway", 50052), SCRAPER}


def test_gateway_reaches_its_downstreams(objects: list[Object]) -> None:
    assert reached(objects, "gateway") == {
        ("scheduler", 50052),
        ("executor", 50053),
        ("browser-pool", 50054),
        ("nats", 4222),
    } | postgres(objects) | otlp(objects)
    assert admitted(objects, "gateway") == {("any", 50051), SCRAPER}


def test_migration_reaches_only_postgres(objects: list[Object]) -> None:
    assert reached(objects, "migrate") == postgres(objects)


def test_postgres_egress_is_narrowed_in_production() -> None:
    (rule,) = find(rendered("production"), "NetworkPolicy", "postgres-egress")["spec"]["egress"]
    (peer,) = rule["to"]
    network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
    assert network.prefixlen >= 8


def test_browsers_reach_only_the_public_internet(objects: list[Object]) -> None:
    assert admitted(objects, "browser-pool") == {("gateway", 50054), SCRAPER}
    collector = [
        rule
        for policy in objects
        if (policy["kind"], policy["metadata"]["name"]) == ("NetworkPolicy", OTLP_POLICY)
        for rule in policy["spec"]["egress"]
    ]
    blocks = []
    for rule in rules(objects, "browser-pool", "Egress"):
        if is_dns(rule) or rule in collector:  # the tracing component's: its own test
            continue
        for peer in peers(rule, "Egress"):
            assert set(peer) == {"ipBlock"}, peer
            blocks.append(peer["ipBlock"])
        assert peers(rule, "Egress"), "an egress rule open to every destination"
    assert {ipaddress.ip_network(b["cidr"]).version for b in blocks} == {4, 6}
    for block in blocks:
        cidr = ipaddress.ip_network(block["cidr"])
        excepted = [ipaddress.ip_network(e) for e in block.get("except", [])]
        for forbidden in FORBIDDEN_FOR_BROWSERS:
            if forbidden.version != cidr.version or not forbidden.overlaps(cidr):
                continue
            assert any(
                forbidden.subnet_of(e)  # type: ignore[arg-type]
                for e in excepted
                if e.version == forbidden.version
            ), f"browsers can reach {forbidden}"


def test_nats_accepts_only_the_mesh(objects: list[Object]) -> None:
    labels = pod_labels(objects)
    allowed: set[tuple[str, int]] = set()
    for rule in rules(objects, "nats", "Ingress"):
        for peer in peers(rule, "Ingress"):
            if "namespaceSelector" in peer:
                assert peer["namespaceSelector"] == {
                    "matchLabels": {"kubernetes.io/metadata.name": "keda"}
                }
                names = ["keda"]
            else:
                names = [c for c, lab in labels.items() if selects(peer["podSelector"], lab)]
            allowed |= {(n, p["port"]) for n in names for p in rule["ports"]}
    assert allowed == {
        ("gateway", 4222),
        ("scheduler", 4222),
        ("executor", 4222),
        ("nats", 4222),
        ("nats", 6222),
        ("keda", 8222),
    }


def test_only_monitoring_scrapes_and_only_the_services_metrics(objects: list[Object]) -> None:
    labels = pod_labels(objects)
    for component in labels:
        allowed = admitted(objects, component)
        from_monitoring = {port for peer, port in allowed if peer == SCRAPER[0]}
        to_metrics = {peer for peer, port in allowed if port == METRICS_PORT}
        if component in SERVICES:
            assert from_monitoring == {METRICS_PORT}, component
            assert to_metrics == {SCRAPER[0]}, component
        else:
            assert not from_monitoring and not to_metrics, component
    policy = find(objects, "NetworkPolicy", "metrics")["spec"]
    assert policy["policyTypes"] == ["Ingress"] and "egress" not in policy
    assert {c for c, lab in labels.items() if selects(policy["podSelector"], lab)} == set(SERVICES)
    scraped = {
        o["metadata"]["name"]
        for o in objects
        if pod_spec(o) is not None
        and "prometheus.io/scrape" in o["spec"]["template"]["metadata"].get("annotations", {})
    }
    assert scraped == set(SERVICES)  # NATS' 8222 is not Prometheus' format


def test_tracing_component_sets_the_endpoint_and_opens_only_the_collector() -> None:
    traced, plain = rendered("production-tracing"), rendered("production")
    # Adds one policy, changes the four Deployments, leaves everything else alone.
    before = {(o["kind"], o["metadata"]["name"]): o for o in plain}
    after = {(o["kind"], o["metadata"]["name"]): o for o in traced}
    assert set(after) - set(before) == {("NetworkPolicy", OTLP_POLICY)}
    assert set(before) <= set(after)
    assert {k for k in before if before[k] != after[k]} == {("Deployment", c) for c in SERVICES}
    for component in SERVICES:
        _, container = service_container(traced, component)
        _, untraced = service_container(plain, component)
        # kustomize puts what a patch adds first (see kustomize.py).
        assert container["env"] == [
            {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": OTLP_ENDPOINT},
            *untraced["env"],
        ]
        assert {**container, "env": untraced["env"]} == untraced
    # The policy agrees with the endpoint: its namespace and port, TCP, egress only.
    host = re.fullmatch(r"http://[a-z0-9-]+\.([a-z0-9-]+):(\d+)", OTLP_ENDPOINT)
    assert host and (f"ns:{host.group(1)}", int(host.group(2))) == COLLECTOR
    policy = after[("NetworkPolicy", OTLP_POLICY)]["spec"]
    assert policy["policyTypes"] == ["Egress"] and "ingress" not in policy
    (rule,) = policy["egress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": COLLECTOR[1]}]
    assert [namespace_of(peer) for peer in rule["to"]] == [COLLECTOR[0]]
    labels = pod_labels(traced)
    assert {c for c, lab in labels.items() if selects(policy["podSelector"], lab)} == set(SERVICES)
    for component in labels:
        old = rules(plain, component, "Egress")
        new = [r for r in rules(traced, component, "Egress") if r not in old]
        assert new == ([rule] if component in SERVICES else []), component
        assert rules(traced, component, "Ingress") == rules(plain, component, "Ingress")
    # The README's line is this component, seen from the production overlay.
    assert (PRODUCTION / TRACING_ENTRY).resolve() == TRACING
    assert f"components: [{TRACING_ENTRY}]" in (DEPLOY / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("variant", ["base", "production", "production-gvisor"])
def test_without_the_component_nothing_is_traced_out(variant: str) -> None:
    objects = rendered(variant)
    for _, _, container in containers(objects):
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in {e["name"] for e in container.get("env", [])}
    # No rule names 4317 or namespace observability. (The browsers' any-port egress goes to
    # public addresses only: test_browsers_reach_only_the_public_internet.)
    for policy in objects:
        if policy["kind"] != "NetworkPolicy":
            continue
        for rule in policy["spec"].get("egress", []):
            assert COLLECTOR[1] not in [p["port"] for p in rule.get("ports", [])]
            for peer in peers(rule, "Egress"):
                selector = peer.get("namespaceSelector", {}).get("matchLabels", {})
                assert selector.get("kubernetes.io/metadata.name") != "observability"


def test_renderer_checks_kinds_as_kustomize_does(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    # A Component listed as a resource, and a Kustomization listed as a component: errors.
    (overlay / "kustomization.yaml").write_text(f"resources: [{TRACING}]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected kind Kustomization"):
        render(overlay)
    with pytest.raises(ValueError, match="expected kind Component"):
        render(overlay, {"components": [str(BASE)]})
    # A Component must be v1alpha1 (kustomize's EnforceFields).
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Component\n", encoding="utf-8"
    )
    with pytest.raises(ValueError, match="apiVersion of a Component"):
        render(overlay, {"components": [str(wrong)]})


# ----------------------------------------------------------- scaling, budgets, the NATS cluster


@pytest.mark.parametrize("component", ["gateway", "scheduler"])
def test_hpa(objects: list[Object], component: str) -> None:
    hpa = find(objects, "HorizontalPodAutoscaler", component)["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": component,
    }
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]


def test_keda_scales_executors_on_jetstream_lag(objects: list[Object]) -> None:
    hpas = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    assert all(h["spec"]["scaleTargetRef"]["name"] != "executor" for h in hpas)
    scaled = find(objects, "ScaledObject", "executor")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "triggers",
    }
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "executor",
    }
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    consumers = set()
    headless = find(objects, "Service", "nats-headless")
    for trigger in spec["triggers"]:
        assert set(trigger) == {"type", "metadata"}
        assert trigger["type"] == "nats-jetstream"
        meta = trigger["metadata"]
        assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
        assert meta["stream"] == subjects.JOBS_STREAM
        assert meta["account"] == "$G"
        assert int(meta["lagThreshold"]) > 0
        host, port = meta["natsServerMonitoringEndpoint"].rsplit(":", 1)
        assert host == f"nats-headless.{NAMESPACE}.svc.cluster.local"
        assert int(port) in [p["port"] for p in headless["spec"]["ports"]]
        consumers.add(meta["consumer"])
    assert consumers == {subjects.executor_consumer(lane) for lane in subjects.LANES}
    assert consumers == {"executors-interactive", "executors-batch"}


def test_every_component_has_a_disruption_budget(objects: list[Object]) -> None:
    labels = pod_labels(objects)
    for component in [*SERVICES, "nats"]:
        pdb = find(objects, "PodDisruptionBudget", component)["spec"]
        assert selects(pdb["selector"], labels[component])
        assert [c for c, lab in labels.items() if selects(pdb["selector"], lab)] == [component]


def test_nats_is_a_three_node_jetstream_cluster(objects: list[Object]) -> None:
    sts = find(objects, "StatefulSet", "nats")
    assert sts["spec"]["replicas"] == 3
    headless = find(objects, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    spec = pod_spec(sts)
    assert spec is not None
    (container,) = spec["containers"]
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}[
        claim["metadata"]["name"]
    ] == "/data"
    config = find(objects, "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert re.search(r"jetstream\s*\{[^}]*store_dir:\s*/data", config)
    cluster = re.search(r"cluster\s*\{(.*?)\n\s*\}", config, re.S)
    assert cluster
    routes = re.findall(r"nats://([\w.-]+):6222", cluster.group(1))
    assert routes == [f"nats-{i}.{headless['metadata']['name']}" for i in range(3)]
    assert "server_name: $POD_NAME" in config
    client = find(objects, "Service", "nats")
    assert [p["port"] for p in client["spec"]["ports"]] == [4222]


# ---------------------------------------------------------------------- docker and compose


def compose() -> Object:
    with (ROOT / "docker-compose.yml").open(encoding="utf-8") as fh:
        data: Object = yaml.safe_load(fh)
    return data


def test_compose_services_run_the_commands_with_the_env_they_read() -> None:
    services = compose()["services"]
    assert {"nats", "postgres", "migrate", *SERVICES} <= set(services)
    assert "-js" in services["nats"]["command"]
    seen = set()
    for name, service in services.items():
        command = service.get("command")
        if name == "migrate":
            assert command == ["sandmesh", "migrate", "up"]
            assert set(service["environment"]) == {"DATABASE_URL"}
            continue
        if not command or command[0] not in COMMAND_TO_COMPONENT:
            continue
        component = COMMAND_TO_COMPONENT[command[0]]
        assert name == component and command == [SERVICES[component][0]]
        seen.add(component)
        env: dict[str, str] = service.get("environment", {})
        assert set(env) <= known_env(component), set(env) - known_env(component)
        assert loopback_defaults(SERVICES[component][1]) <= set(env)
        for variable, value in env.items():
            target = re.fullmatch(r"(?:nats://|postgresql://[^@]*@)?([a-z-]+):(\d+)(?:/.*)?", value)
            if target:
                assert target.group(1) in services, f"{variable}={value}"
                peer = COMMAND_TO_COMPONENT.get(
                    (services[target.group(1)].get("command") or [""])[0]
                )
                if peer:
                    assert int(target.group(2)) == port_default(SERVICES[peer][1])
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert service["depends_on"] if component != "browser-pool" else True
    assert seen == set(SERVICES)


def test_compose_database_urls_agree() -> None:
    services = compose()["services"]
    urls = {
        s["environment"]["DATABASE_URL"]
        for s in services.values()
        if "DATABASE_URL" in s.get("environment", {})
    }
    (url,) = urls
    pg = services["postgres"]["environment"]
    assert url == (
        f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/"
        f"{pg['POSTGRES_DB']}"
    )


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", text, re.M)
    packages = set(re.findall(r"^\s+([a-z0-9][a-z0-9.+-]+) \\$", text, re.M))
    assert {
        "bubblewrap",
        "chromium",
        "python3",
        "nodejs",
        "gcc",
        "g++",
        "golang-go",
        "default-jdk-headless",
        "php-cli",
        "ruby",
        "util-linux",
    } <= packages
    assert re.search(r"^RUN pip install \.", text, re.M)
    (user,) = re.findall(r"^USER (\S+)$", text, re.M)
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0"
    assert re.search(r'^CMD \["sandmesh", "--help"\]$', text, re.M)
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv"} <= set(ignored)
    assert not {"gen", "libs", "services", "clients", "pyproject.toml"} & set(ignored)


def test_no_machine_paths_in_deploy_files() -> None:
    files = [
        *DEPLOY.rglob("*.yaml"),
        DEPLOY / "README.md",
        ROOT / "Dockerfile",
        ROOT / "docker-compose.yml",
        ROOT / ".dockerignore",
    ]
    for path in files:
        text = path.read_text(encoding="utf-8")
        for forbidden in FORBIDDEN_PATHS:
            assert not re.search(rf"(?<![\w/]){re.escape(forbidden)}(?![\w-])", text), (
                f"{path.name} mentions {forbidden}"
            )
