"""deploy/kubernetes checked offline: every manifest against the Kubernetes API schemas
(kubernetes-validate, strict), the GPU overlay's Deployment as kustomize merges it, and the
manifests' ports, probes, grace periods, flags and metric names against the service's own,
so that they cannot drift apart."""

import copy
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from conftest import ROOT
from service.config import ServerConfig, _convert
from service.metrics import Metrics

K8S = ROOT / "deploy" / "kubernetes"
BUILT_IN = ("v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1")


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> dict[str, dict]:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    return {f"{d['kind']}/{d['metadata']['name']}": d for name in listed for d in documents(K8S / name)}


def merged(base: dict, patch: dict) -> dict:
    """A strategic-merge patch as kustomize applies one to a Deployment: maps merge, containers by name."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if key == "containers":
            by_name = {c["name"]: c for c in out[key]}
            for c in value:
                by_name[c["name"]] = merged(by_name.get(c["name"], {}), c)
            out[key] = list(by_name.values())
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def gpu_deployment() -> dict:
    overlay = yaml.safe_load((K8S / "gpu" / "kustomization.yaml").read_text())
    patch = documents(K8S / "gpu" / overlay["patches"][0]["path"])[0]
    return merged(manifests()["Deployment/asr"], patch)


def test_every_manifest_validates_against_the_kubernetes_schemas():
    docs = list(manifests().values()) + [gpu_deployment()] + documents(K8S / "prometheus-adapter-rules.yaml")
    checked = [d for d in docs if d["apiVersion"] in BUILT_IN]
    for doc in checked:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    kinds = {d["kind"] for d in checked}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "CronJob", "NetworkPolicy"} <= kinds
    # the Prometheus Operator's kinds have no schema there: the rules are deploy/alerts.yml's, which promtool checks
    rule = manifests()["PrometheusRule/asr"]
    assert rule["spec"] == yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())


def test_manifests_agree_with_the_service_flags_and_metrics():
    m = manifests()
    flags = m["ConfigMap/asr-flags"]["data"]
    by_env = {f"CTC_ASR_{f.name.upper()}": f for f in fields(ServerConfig)}
    assert set(flags) <= set(by_env), set(flags) - set(by_env)
    cfg = {by_env[k].name: _convert(by_env[k].type, v) for k, v in flags.items()}  # each value parses as its flag

    pod = m["Deployment/asr"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": cfg["port"], "http": cfg["http_port"], "metrics": cfg["metrics_port"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == cfg["port"]  # grpc.health.v1, NOT_SERVING while draining
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + cfg["grace_seconds"] + 5  # the drain fits before the kill
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > grace  # a draining pod is not restarted
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"--uid {pod['securityContext']['runAsUser']} " in dockerfile  # the image's user
    exposed = re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split()
    assert sorted(map(int, exposed)) == sorted(ports.values())
    mounted = {v["mountPath"] for v in container["volumeMounts"]}
    assert str(Path(cfg["auth_tokens_file"]).parent) in mounted

    for name in ("Service/asr", "Service/asr-headless"):
        for p in m[name]["spec"]["ports"]:
            assert p["targetPort"] in ports and p["port"] == ports[p["targetPort"]]
    assert m["ServiceMonitor/asr"]["spec"]["endpoints"][0]["port"] == "metrics"
    policy = m["NetworkPolicy/asr"]["spec"]["ingress"]
    assert {p["port"] for p in policy[0]["ports"]} == {cfg["port"], cfg["http_port"]}
    assert policy[1]["ports"] == [{"port": cfg["metrics_port"], "protocol": "TCP"}]
    assert policy[1]["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}

    registry = {metric.name for metric in Metrics().registry.collect()}
    hpa_metric = m["HorizontalPodAutoscaler/asr"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    adapter = yaml.safe_load(documents(K8S / "prometheus-adapter-rules.yaml")[0]["data"]["config.yaml"])["rules"][0]
    assert hpa_metric == adapter["name"]["as"] == "asr_active_streams" and hpa_metric in registry
    assert re.match(r"^(\w+)\{", adapter["seriesQuery"]).group(1) in registry
    assert gpu_deployment()["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_the_adapter_query_is_promql_and_the_prober_job_runs_the_prober(tmp_path):
    adapter = yaml.safe_load(documents(K8S / "prometheus-adapter-rules.yaml")[0]["data"]["config.yaml"])["rules"][0]
    query = (adapter["metricsQuery"].replace("<<.Series>>", "asr_active_streams")
             .replace("<<.LabelMatchers>>", 'namespace="asr",pod=~"asr-.*"').replace("<<.GroupBy>>", "pod"))
    rules = tmp_path / "adapter.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": [
        {"record": "adapter:series", "expr": adapter["seriesQuery"]}, {"record": "adapter:metric", "expr": query}]}]}))
    run = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr

    job = manifests()["CronJob/asr-prober"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert job["command"][:3] == ["python3", "-m", "service.prober"]
    usage = subprocess.run([sys.executable, "-m", "service.prober", "--help"], capture_output=True, text=True,
                           cwd=ROOT).stdout
    for flag in (arg for arg in job["command"][3:] if arg.startswith("--")):
        assert flag in usage, flag


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml")))
def test_every_file_is_in_the_kustomization_or_said_apart(path):
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert path in listed or path in ("kustomization.yaml", "prometheus-adapter-rules.yaml")
