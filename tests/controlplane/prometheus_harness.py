"""A real Prometheus for tests: Debian's ``prometheus`` binary on a loopback port, stopped after.

`Prometheus.scrape` writes static scrape targets into its ``prometheus.yml``, reloads it
(SIGHUP) and waits until every target has been scraped; `local_targets` lists the metrics
ports of what the ``local`` runtime runs, from the ``ports.json`` it keeps per owner, labelled
the way a Kubernetes scrape of the pods would label them (``namespace``,
``gyre_dev_owner_name``, ``gyre_dev_workload``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from gyre.controlplane import procs
from gyre.manifests import repo_root
from operator_harness import free_port

from tests.support import eventually

# The ports on which Gyre workloads serve /metrics: a worker's own, a service's HTTP port.
METRICS_PORTS = ("metrics", "http")


def dashboard_generator() -> ModuleType:
    """``charts/gyre/hack/generate_dashboards.py``: where the shipped dashboards come from."""
    path = repo_root() / "charts" / "gyre" / "hack" / "generate_dashboards.py"
    spec = importlib.util.spec_from_file_location("chart_hack_generate_dashboards", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Target:
    job: str
    address: str  # host:port
    labels: Mapping[str, str] = field(default_factory=dict)


def local_targets(state_dir: Path) -> list[Target]:
    """The metrics ports of every workload replica the local runtime under ``state_dir`` runs."""
    out = []
    for ports_file in sorted(state_dir.glob("*/*/ports.json")):
        owner_dir = ports_file.parent
        _, _, owner = owner_dir.name.partition("-")  # "<kind>-<name>"; kinds have no dash
        for workload, ports in json.loads(ports_file.read_text()).items():
            for name in METRICS_PORTS:
                for number in ports.get(name, []):
                    labels = {
                        "namespace": owner_dir.parent.name,
                        "gyre_dev_owner_name": owner,
                        "gyre_dev_workload": workload,
                    }
                    out.append(Target(f"gyre-{workload}", f"127.0.0.1:{number}", labels))
    return out


class Prometheus:
    """``prometheus`` as a child process with its data in ``workdir``."""

    def __init__(self, workdir: Path, scrape_interval: str = "1s") -> None:
        self.workdir = workdir
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        self._write_config([])
        cmd = [
            "prometheus", f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

        def ready() -> None:
            assert self.proc is not None
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log()}"
            assert self._get("/-/ready") is not None, "not ready yet"

        eventually(ready, timeout=60, interval=0.2)
        return self

    def stop(self) -> None:
        procs.stop(self.proc, timeout_s=30)

    def log(self, lines: int = 40) -> str:
        return procs.log_tail(self.log_path, lines) if self.log_path.exists() else ""

    def scrape(self, targets: Sequence[Target]) -> None:
        """Scrape exactly ``targets`` from now on; returns once each has been scraped."""
        self._write_config(targets)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        wanted = {f"http://{t.address}/metrics" for t in targets}

        def all_up() -> None:
            active = self.api("/api/v1/targets", state="active")["activeTargets"]
            health = {t["scrapeUrl"]: (t["health"], t["lastError"]) for t in active}
            missing = {url: health.get(url) for url in wanted if health.get(url, ("",))[0] != "up"}
            assert not missing, f"targets not scraped yet: {missing}"

        eventually(all_up, timeout=60, interval=0.5)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query (``/api/v1/query``) at the current time: the result's series."""
        data = self.api("/api/v1/query", query=expr)
        if data["resultType"] != "vector":
            raise AssertionError(f"{expr}: a {data['resultType']}, not an instant vector")
        result: list[dict[str, Any]] = data["result"]
        return result

    def label_values(self, label: str, selector: str) -> list[str]:
        """What Grafana's ``label_values(selector, label)`` lists: the label's non-empty values."""
        values: list[str] = self.api(f"/api/v1/label/{label}/values", **{"match[]": selector})
        return values

    @staticmethod
    def finite(result: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The series of an instant-vector result whose value is a number (not NaN or ±Inf)."""
        return [s for s in result if math.isfinite(float(s["value"][1]))]

    def api(self, path: str, **params: str) -> Any:
        body = self._get(f"{path}?{urllib.parse.urlencode(params)}")
        assert body is not None, f"GET {path} failed:\n{self.log()}"
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def _get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return str(r.read().decode())
        except urllib.error.HTTPError as e:
            if e.code == 400:  # a bad query: say why
                raise AssertionError(f"GET {path}: {e.read().decode()}") from e
            return None
        except OSError:
            return None

    def _write_config(self, targets: Sequence[Target]) -> None:
        jobs: dict[str, list[dict[str, Any]]] = {}
        for t in targets:
            jobs.setdefault(t.job, []).append({"targets": [t.address], "labels": dict(t.labels)})
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [{"job_name": job, "static_configs": static} for job, static in jobs.items()],
        }
        # JSON is YAML; written whole and renamed, so a reload never reads half a file.
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=1))
        tmp.replace(self.config_path)
