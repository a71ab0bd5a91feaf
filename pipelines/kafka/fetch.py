"""Fetching the Kafka broker jars from Maven Central into ``$GYRE_CACHE/kafka/<version>/libs/``.

The broker is ``org.apache.kafka:kafka_2.13`` and its runtime dependencies, resolved by Maven
from a generated one-dependency pom, plus the log4j binding for slf4j (Kafka's distribution
ships it; the Maven artifact does not, and without it the broker logs nothing). The result is
cached once per version under ``$GYRE_CACHE`` (default ``~/.cache/gyre``, the cache every
other part of setup uses); concurrent callers (tests and a benchmark) wait on a file lock
instead of fetching twice.

``python -m gyre.pipelines.kafka.fetch [--version V]`` prints the libs directory.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KAFKA_VERSION = "4.4.0"
SCALA_BINARY = "2.13"
CACHE_ENV = "GYRE_CACHE"
_COMPLETE = ".complete"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.gyre</groupId><artifactId>kafka-libs</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
</project>
"""
_DEP = "    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gyre")


def libs_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_root() / "kafka" / version / "libs"


def _log(msg: str) -> None:
    print(f"kafka-fetch: {msg}", file=sys.stderr, flush=True)


def _copy_dependencies(workdir: Path, deps: list[tuple[str, str, str]], out: Path) -> None:
    pom = workdir / "pom.xml"
    pom.write_text(_POM.format(deps="\n".join(_DEP.format(g=g, a=a, v=v) for g, a, v in deps)))
    cmd = [
        "mvn", "-B", "-q", "-f", str(pom),
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={out}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"mvn failed ({proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr}")


def ensure_kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """The directory holding the broker's jars, fetching them on first use."""
    libs = libs_dir(version)
    if (libs / _COMPLETE).exists():
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    with open(libs.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be fetching the same version
        if (libs / _COMPLETE).exists():
            return libs
        if shutil.which("mvn") is None:
            raise RuntimeError("Maven (mvn) is needed to fetch the Kafka jars; install it")
        _log(f"resolving org.apache.kafka:kafka_{SCALA_BINARY}:{version} from Maven Central")
        with tempfile.TemporaryDirectory(dir=libs.parent) as tmp:
            work = Path(tmp)
            staged = work / "libs"
            _copy_dependencies(work, [("org.apache.kafka", f"kafka_{SCALA_BINARY}", version)], staged)
            log4j = sorted(staged.glob("log4j-core-*.jar"))
            if log4j:
                # The binding must match log4j-core's version exactly.
                log4j_version = log4j[0].name[len("log4j-core-") : -len(".jar")]
                _copy_dependencies(
                    work,
                    [("org.apache.logging.log4j", "log4j-slf4j-impl", log4j_version)],
                    staged,
                )
            (staged / _COMPLETE).write_text(version + "\n")
            if libs.exists():
                shutil.rmtree(libs)  # a partial directory from an interrupted older layout
            os.rename(staged, libs)
        _log(f"cached {len(list(libs.glob('*.jar')))} jars in {libs}")
    return libs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=KAFKA_VERSION)
    args = parser.parse_args(argv)
    print(ensure_kafka_libs(args.version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
