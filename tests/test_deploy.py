"""The deployment files are checked by the tools built for them (promtool, hadolint, a Kubernetes schema
validator) and against each other and the service they deploy."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ROOT = DEPLOY.parent


def run(*cmd, cwd=None):
    exe = shutil.which(cmd[0]) or (f"/usr/bin/{cmd[0]}" if Path(f"/usr/bin/{cmd[0]}").exists() else None)
    if exe is None:
        pytest.fail(f"{cmd[0]} is not installed (bash deploy/install.sh installs it)")
    r = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def test_prometheus_config_and_alert_rules_pass_promtool():
    run("promtool", "check", "config", "prometheus.yml", cwd=DEPLOY / "prometheus")
    run("promtool", "check", "rules", "alerts.yml", cwd=DEPLOY / "prometheus")
    out = run("promtool", "test", "rules", "alerts_test.yml", cwd=DEPLOY / "prometheus")
    assert "SUCCESS" in out


def test_dockerfile_passes_hadolint_and_uses_the_install_script():
    run("hadolint", str(ROOT / "Dockerfile"))
    text = (ROOT / "Dockerfile").read_text()
    assert "deploy/install.sh" in text and "USER 10001" in text and "HEALTHCHECK" in text
    assert "pip install" not in text, "every install step is in deploy/install.sh, which CI runs too"


def test_kubernetes_manifests_are_valid_and_consistent():
    files = sorted((DEPLOY / "k8s").glob("*.yaml"))
    standard = [f for f in files if "monitoring.coreos.com" not in f.read_text()]
    out = run("kubernetes-validate", "--strict", *map(str, standard))
    assert out.count("passed") == len(standard), out
    docs = {f.stem: yaml.safe_load(f.read_text()) for f in files}
    service = docs["service"]
    for name in ("deployment", "deployment-gpu"):
        pod = docs[name]["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
        c = pod["spec"]["containers"][0]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert pod["spec"]["terminationGracePeriodSeconds"] > 30, "longer than uvicorn's graceful shutdown"
    gpu = docs["deployment-gpu"]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" in gpu["resources"]["limits"]
    monitor = docs["servicemonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert docs["hpa"]["spec"]["scaleTargetRef"]["name"] == docs["deployment"]["metadata"]["name"]


def test_compose_stack_wires_its_parts_from_files_that_exist():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"u2qt", "redis", "prometheus", "grafana"} <= set(services)
    for svc in services.values():
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("./"):
                assert (DEPLOY / src).exists(), f"compose mounts {src}, which is not in deploy/"
    assert "--appendonly" in services["redis"]["command"], "Redis keeps its data (persistence)"
    assert services["u2qt"]["environment"]["REDIS_URL"].startswith("redis://redis:")
    target = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())["scrape_configs"][0]
    assert target["static_configs"][0]["targets"] == ["u2qt:8000"]
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    dashboard = json.loads((DEPLOY / "grafana/dashboards/u2qt.json").read_text())
    assert {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]} == {uid}
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/u2qt.yml").read_text())
    mounted = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounted["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]


def test_the_readme_documents_every_setting_with_its_default():
    """README.md holds `python3 -m service.settings`'s table as it is now: a new or changed setting fails here
    until the README shows it."""
    from u2qt.service.settings import settings_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert settings_table() in readme, "regenerate the README's settings table: python3 -m service.settings"


def test_compose_cluster_override_runs_u2qt_on_three_cluster_masters():
    from u2qt.service.redis_client import is_cluster

    base = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    over = yaml.safe_load((DEPLOY / "compose.cluster.yaml").read_text())["services"]
    nodes = [n for n, svc in over.items() if "--cluster-enabled" in svc.get("command", [])]
    assert nodes == ["redis", "redis-2", "redis-3"] and "redis" in base  # the base Redis becomes a master
    init = " ".join(over["redis-cluster-init"]["command"])
    assert all(f"{n}:6379" in init for n in nodes) and "--cluster create" in init
    assert is_cluster(over["u2qt"]["environment"]["REDIS_URL"])
    assert over["u2qt"]["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully"
