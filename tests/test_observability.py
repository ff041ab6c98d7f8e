"""A real Prometheus scrapes a running service under a short load; every query of the committed Grafana
dashboard and every alert rule is then run against Prometheus's HTTP API. A panel that names a metric the
service does not export returns no data and fails here."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port
from u2qt.training.events import to_service_events

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RATE_INTERVAL = "30s"  # what Grafana's $__rate_interval becomes at a 1 s scrape interval


@pytest.fixture
def prometheus(tmp_path):
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        pytest.fail("prometheus is not installed (bash deploy/install.sh installs it)")
    procs = []

    def start(target: str) -> str:
        shutil.copy(DEPLOY / "prometheus/alerts.yml", tmp_path / "alerts.yml")
        config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("prometheus did not start")

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads((DEPLOY / "grafana/dashboards/u2qt.json").read_text())
    return [
        (p["title"], t["expr"].replace("$__rate_interval", RATE_INTERVAL)) for p in dash["panels"] for t in p["targets"]
    ]


def alert_rules() -> list[tuple[str, str]]:
    groups = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"]]


def test_every_dashboard_panel_and_alert_query_works_against_real_prometheus(serve, prometheus, cj_events):
    from u2qt.training.completejourney import sources_config

    base, _ = serve()
    prom = prometheus(base.removeprefix("http://"))
    events, _ = cj_events
    users = events["user_id"].unique()[:3]
    api = to_service_events(events[events["user_id"].isin(users)].sort_values("ts"), sources_config(), "obs-")
    half = len(api) // 2
    # a short load spread over several scrapes: accepted events, replays, a late event, reads and a 422
    for chunk in (api[:half], api[half:], api[:50]):
        assert httpx.post(f"{base}/tokenize", json={"events": chunk}, timeout=120).status_code == 200
        for u in users:
            assert httpx.get(f"{base}/users/obs-{u}/tokens").status_code == 200
        time.sleep(1.5)
    late = dict(api[0], event_id="obs-late")
    assert httpx.post(f"{base}/tokenize", json={"events": [late]}).json()["late"] == 1
    assert httpx.post(f"{base}/tokenize", json={"events": [{"event_id": "x"}]}).status_code == 422
    time.sleep(3)

    def query(expr):
        r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert r["status"] == "success", (expr, r)
        return r["data"]["result"]

    targets = httpx.get(f"{prom}/api/v1/targets").json()["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets
    # the check has teeth: a misspelt metric in an otherwise working query gives no data
    assert query(f"sum(rate(u2qt_windows_tokenized_total[{RATE_INTERVAL}]))")
    assert not query(f"sum(rate(u2qt_windows_tokenised_total[{RATE_INTERVAL}]))")
    empty = [(title, expr) for title, expr in dashboard_queries() if not query(expr)]
    assert not empty, f"dashboard queries with no data: {empty}"
    assert len(dashboard_queries()) >= 14
    for _name, expr in alert_rules():
        query(expr)  # evaluates without error (an alert need not fire)
    deadline = time.time() + 10
    while True:
        rules = [r for g in httpx.get(f"{prom}/api/v1/rules").json()["data"]["groups"] for r in g["rules"]]
        if len(rules) == len(alert_rules()) and all(r.get("lastEvaluation", "0001").startswith("20") for r in rules):
            break
        assert time.time() < deadline, rules
        time.sleep(0.5)
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    # no alert fires on a healthy service
    assert [r["name"] for r in rules if r["state"] == "firing"] == []
