"""deploy/kubernetes/, checked offline: every built-in resource against the Kubernetes API
schema (kubernetes-validate, strict: no unknown fields), the KServe ones against what KServe
requires, and the references between them (selectors, Secret keys, probe paths)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# The oldest Kubernetes release still maintained when this was written: what the manifests
# promise to run on.
K8S_VERSION = "1.31"
KSERVE_KINDS = {"ClusterServingRuntime", "InferenceService"}

Resource = dict[str, Any]


def load(name: str) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


def resources() -> list[tuple[str, Resource]]:
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted(MANIFESTS.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in load(path.name)
    ]


def one(kind: str, name: str = "bnaas") -> Resource:
    found = [r for _, r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def as_pod(container: Resource) -> Resource:
    """A container spec wrapped in a Pod, so that the core API schema checks it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "check"},
        "spec": {"containers": [container]},
    }


# The KServe custom resources have no schema there: the KServe tests below check them.
BUILT_IN = [(name, r) for name, r in resources() if r["kind"] not in KSERVE_KINDS]


@pytest.mark.parametrize("resource", [r for _, r in BUILT_IN], ids=[n for n, _ in BUILT_IN])
def test_manifest_is_valid_for_the_kubernetes_api(resource: Resource) -> None:
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def test_kustomization_lists_every_built_in_manifest() -> None:
    (kustomization,) = load("kustomization.yaml")
    built_in = {
        path.name
        for path in MANIFESTS.glob("*.yaml")
        if path.name != "kustomization.yaml"
        and not any(doc["kind"] in KSERVE_KINDS for doc in load(path.name))
    }
    assert set(kustomization["resources"]) == built_in


def test_deployment_runs_two_non_root_replicas_with_process_and_store_probes() -> None:
    deployment = one("Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] >= 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])


def test_deployment_reads_the_redis_url_from_the_secret() -> None:
    (container,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["BNAAS_STORE"]["valueFrom"]["secretKeyRef"]
    secret = one("Secret", ref["name"])
    assert secret["stringData"][ref["key"]].startswith("redis://")


def test_service_pdb_and_hpa_point_at_the_deployment() -> None:
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container_ports = {
        p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    service = one("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bnaas"}
    assert hpa["minReplicas"] >= 2


def test_redis_statefulset_keeps_an_append_only_file_on_a_volume() -> None:
    redis = one("StatefulSet", "bnaas-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] in ("everysec", "always")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    assert mounts["data"] == "/data"
    assert "data" in claims
    service = one("Service", redis["spec"]["serviceName"])
    assert (
        service["spec"]["selector"].items()
        <= redis["spec"]["template"]["metadata"]["labels"].items()
    )


def test_kserve_runtime_speaks_v2_from_kserve_container_on_8080() -> None:
    runtime = one("ClusterServingRuntime")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    env = {e["name"]: e for e in container["env"]}
    assert env["BNAAS_PORT"]["value"] == "8080"
    kubernetes_validate.validate(as_pod(container), K8S_VERSION, strict=True)


def test_sample_inference_service_uses_the_runtime_and_its_model_format() -> None:
    runtime = one("ClusterServingRuntime")["spec"]
    isvc = one("InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == "bnaas"
    assert model["protocolVersion"] in runtime["protocolVersions"]
    formats = {(f["name"], f["version"]) for f in runtime["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats
