"""``python -m gyre.pipelines.features``: ``spark-submit`` the feature job (`job`).

The master, driver memory and Spark settings come from the job's config (``$GYRE_CONFIG``):
``local[N]`` on the local runtime, the cluster's API server on Kubernetes. The job's Python
is this interpreter, so the driver imports the same Gyre as the submitter.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from gyre.pipelines.features.config import FeatureJobConfig, start_process

log = logging.getLogger("gyre.features")


def spark_submit_argv(cfg: FeatureJobConfig, spark_home: str) -> list[str]:
    job = str(Path(__file__).with_name("job.py"))
    argv = [
        os.path.join(spark_home, "bin", "spark-submit"),
        "--master",
        cfg.master,
        "--name",
        f"gyre-features-{cfg.name}",
        "--driver-memory",
        cfg.driver_memory,
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.ui.showConsoleProgress=false",
        "--conf",
        "spark.log.level=WARN",
        "--conf",
        f"spark.pyspark.python={sys.executable}",
        "--conf",
        f"spark.pyspark.driver.python={sys.executable}",
    ]
    for key, value in sorted(cfg.spark_conf.items()):
        argv += ["--conf", f"{key}={value}"]
    return [*argv, job]


def main() -> int:
    cfg = start_process(log)
    if cfg is None:
        return 2
    from pyspark.find_spark_home import _find_spark_home

    argv = spark_submit_argv(cfg, _find_spark_home())
    log.info("Submitting FeatureJob %s: %s", cfg.name, " ".join(argv))
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if cfg.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # a local run stays on loopback
    os.execv(argv[0], argv)
    return None
