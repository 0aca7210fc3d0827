"""Offline checks of deploy/kubernetes (no Kubernetes cluster is available
here): every manifest against the Kubernetes API's JSON schemas
(kubernetes-validate, schemas bundled), the references between them, the
configuration against the settings the binary knows, and the pod start-up
script run for a few ordinals."""

import glob
import os
import subprocess
import tomllib

import kubernetes_validate
import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S = os.path.join(ROOT, "deploy", "kubernetes")
BIN = os.environ.get("STARLING_BIN", os.path.join(ROOT, "target", "debug", "starling"))


def manifests():
    docs = []
    for path in sorted(glob.glob(os.path.join(K8S, "*.yaml"))):
        if os.path.basename(path) == "kustomization.yaml":
            continue
        with open(path) as f:
            docs += [(os.path.basename(path), d) for d in yaml.safe_load_all(f) if d]
    return docs


def by_kind(kind):
    return [d for _, d in manifests() if d["kind"] == kind]


@pytest.mark.parametrize("name,doc", manifests(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_matches_the_api_schema(name, doc):
    version = kubernetes_validate.utils.latest_version()
    kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_every_manifest():
    with open(os.path.join(K8S, "kustomization.yaml")) as f:
        listed = set(yaml.safe_load(f)["resources"])
    present = {os.path.basename(p) for p in glob.glob(os.path.join(K8S, "*.yaml"))} - {"kustomization.yaml"}
    assert listed == present


def test_references_between_manifests_hold():
    (sts,) = by_kind("StatefulSet")
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    for s in services.values():
        assert s["spec"]["selector"].items() <= labels.items(), s["metadata"]["name"]
        for p in s["spec"]["ports"]:
            assert p["targetPort"] in port_names, p
    peers = services[sts["spec"]["serviceName"]]
    assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"]
    assert [p["port"] for p in peers["spec"]["ports"]] == [7000]
    assert services["starling"]["spec"]["type"] == "LoadBalancer"
    assert 7000 not in [p["port"] for p in services["starling"]["spec"]["ports"]], "gRPC stays internal"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    config = {v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v}
    assert config == {c["metadata"]["name"] for c in by_kind("ConfigMap")}
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert {m["name"] for m in container["volumeMounts"]} <= claims | {v["name"] for v in pod["spec"]["volumes"]}
    (pdb,) = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_configuration_uses_only_settings_the_binary_knows():
    known = tomllib.loads(subprocess.run([BIN, "generate-config"], capture_output=True, text=True,
                                         check=True).stdout)
    (cm,) = by_kind("ConfigMap")
    config = tomllib.loads(cm["data"]["starling.toml"])
    for table, keys in config.items():
        assert table in known, table
        for key in keys:
            assert key in known[table], f"{table}.{key}"


@pytest.mark.parametrize("ordinal", [0, 1, 3])
def test_start_up_script_gives_each_pod_its_node_id_and_join(ordinal, tmp_path):
    (sts,) = by_kind("StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["/bin/sh", "-c"]
    fake = tmp_path / "starling"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "POD_NAME": f"starling-{ordinal}", "POD_NAMESPACE": "mqtt"}
    out = subprocess.run(["/bin/sh", "-c", container["args"][0]], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[:3] == ["serve", "--config", "/etc/starling/starling.toml"]
    assert out[out.index("--node-id") + 1] == str(ordinal + 1)
    if ordinal == 0:
        assert "--join" not in out, "starling-0 starts the cluster"
    else:
        assert "--no-bootstrap" in out
        assert out[out.index("--join") + 1] == "starling-0.starling-peers.mqtt.svc:7000"
