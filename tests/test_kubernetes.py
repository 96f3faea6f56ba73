"""deploy/kubernetes checked offline: both variants as `kubectl kustomize` renders them, every
manifest against the Kubernetes API schemas (kubernetes-validate, strict), and the
manifests' ports, probes, grace periods, flags and metric names against the service's own,
so that they cannot drift apart."""

import functools
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import kubernetes_validate
import yaml
from conftest import ROOT
from prerequisites import requires

from service.config import ServerConfig, _convert
from service.metrics import Metrics

K8S = ROOT / "deploy" / "kubernetes"
BUILT_IN = ("v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1")
KUBECTL = shutil.which("kubectl")
pytestmark = requires("kubectl")


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@functools.cache
def rendered(variant: str) -> dict[str, dict]:
    """What `kubectl apply -k` would apply, rendered by kubectl's own kustomize."""
    run = subprocess.run([KUBECTL, "kustomize", str(K8S / variant)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(run.stdout) if d}


def manifests() -> dict[str, dict]:
    return rendered(".")


def gpu_deployment() -> dict:
    return rendered("gpu")["Deployment/asr"]


def test_every_manifest_validates_against_the_kubernetes_schemas():
    docs = (list(manifests().values()) + list(rendered("gpu").values())
            + documents(K8S / "prometheus-adapter-rules.yaml") + documents(K8S / "promotion-job.yaml"))
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


@requires("promtool")
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
    assert job["command"][:3] == ["python3", "-m", "service.tools.prober"]
    usage = subprocess.run([sys.executable, "-m", "service.tools.prober", "--help"], capture_output=True, text=True,
                           cwd=ROOT).stdout
    for flag in (arg for arg in job["command"][3:] if arg.startswith("--")):
        assert flag in usage, flag


def test_every_manifest_is_in_the_kustomization_or_said_apart():
    listed = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"]
    assert sorted(p.name for p in (K8S / "base").glob("*.yaml")) == sorted(listed + ["kustomization.yaml"])
    assert sorted(p.name for p in K8S.glob("*.yaml")) == ["kustomization.yaml", "prometheus-adapter-rules.yaml",
                                                         "promotion-job.yaml"]
    assert set(rendered("gpu")) == set(manifests())  # the overlay patches, adds nothing


def test_the_promotion_job_stages_a_candidate_with_the_prober():
    job = documents(K8S / "promotion-job.yaml")[0]["spec"]["template"]["spec"]["containers"][0]
    assert job["command"][:3] == ["python3", "-m", "service.tools.prober"] and "--stage" in job["command"]
    usage = subprocess.run([sys.executable, "-m", "service.tools.prober", "--help"], capture_output=True, text=True,
                           cwd=ROOT).stdout
    for flag in (arg for arg in job["command"][3:] if arg.startswith("--")):
        assert flag in usage, flag
