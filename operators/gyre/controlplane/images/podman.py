"""The project's images built from its Dockerfiles with podman, without Docker or a registry.

The base is a Debian root filesystem made by ``debootstrap --variant=minbase`` with Python,
pip and CA certificates, imported with ``podman import`` and passed to the Dockerfiles as
their ``PYTHON_IMAGE`` build argument (they otherwise start from ``python:3.11-slim``, which
cannot be pulled here). Each built image is saved as an OCI archive that the real node's
containerd imports (`gyre.controlplane.ControlPlane.load_image`).

Everything is cached under ``$GYRE_CACHE/images``, keyed by a hash of its inputs: the base by
its suite and packages, an image by its Dockerfile, build arguments, the base's key, the
files of the build context (those the repository's ``.dockerignore`` lets through) and the
names and sizes of the prebuilt wheels or jars mounted into the build. An unchanged image is not
rebuilt, and its archive is reused as it is.

podman runs with a private configuration and storage under ``$GYRE_CACHE/podman``: runc
(crun cannot run on this host's hybrid cgroups), explicit ``nofile``/``nproc`` limits, the
cgroupfs manager, and host networking for the builds (no bridge or iptables chain is made).
The host's CA bundle is mounted into every build step, so package installs trust what the
host trusts.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gyre.controlplane.images import images_cache
from gyre.pipelines.kafka.fetch import KAFKA_VERSION, ensure_kafka_libs

log = logging.getLogger("gyre.images")

BASE_SUITE = "bookworm"
BASE_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-pip", "ca-certificates")
BASE_IMAGE = "gyre.local/python3-base"
# podman's default storage, where it keeps a blob cache whatever its configured storage is.
HOST_STORAGE = Path("/var/lib/containers")
BLOB_CACHE = Path("cache/blob-info-cache-v1.boltdb")
RUNC_STATE = Path("/run/runc")
KEY_LENGTH = 16  # hex digits of an image's key
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Where a build step finds the prebuilt wheels or jars (images/runtime and images/kafka read it).
PREBUILT_MOUNT = "/prebuilt"
# Higher nproc limits are refused on this host; podman's defaults fail here.
ULIMITS = ("nofile=20000:20000", "nproc=32768:32768")


class ImageBuildError(RuntimeError):
    pass


def cache_root() -> Path:
    return images_cache().parent


def _run(args: Sequence[str], *, env: Mapping[str, str] | None = None, what: str) -> str:
    out = subprocess.run(list(args), env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-40:])
        raise ImageBuildError(f"{what} failed (exit {out.returncode}):\n{tail}")
    return out.stdout


# -- the base root filesystem ---------------------------------------------------------------------


def base_key() -> str:
    spec = "\0".join((BASE_SUITE, BASE_MIRROR, *BASE_PACKAGES, "python-pip-names", "no-externally-managed"))
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def base_rootfs() -> Path:
    """The base's root filesystem as a tarball in the cache, debootstrapped when missing."""
    out = images_cache() / f"base-{base_key()}.tar"
    if out.exists():
        return out
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (Debian: apt-get install debootstrap)")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix="base-") as tmp:
        root = Path(tmp) / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                BASE_SUITE,
                str(root),
                BASE_MIRROR,
            ],
            what="debootstrap",
        )
        # pip installs into the image's system Python, as in the official python images.
        for marker in (root / "usr" / "lib").glob("python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        for name, target in (("python", "python3"), ("pip", "pip3")):
            link = root / "usr" / "bin" / name
            if not link.exists():
                link.symlink_to(target)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (root / cache).glob("*"):
                if p.is_file():
                    p.unlink()
        partial = out.with_suffix(".partial")
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], what="tar of the base")
        partial.rename(out)
    log.info("Base root filesystem %s built in %.0f s", out.name, time.monotonic() - t0)
    return out


# -- podman ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Podman:
    """podman with this project's own configuration and storage."""

    home: Path = field(default_factory=lambda: cache_root() / "podman")

    def _configure(self) -> dict[str, str]:
        for d in ("storage", "run", "tmp"):
            (self.home / d).mkdir(parents=True, exist_ok=True)
        ulimits = ", ".join(f'"{u}"' for u in ULIMITS)
        containers_conf = self.home / "containers.conf"
        text = (
            "[containers]\n"
            f"default_ulimits = [{ulimits}]\n"
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{self.home / "tmp"}"\n'
        )
        if not containers_conf.exists() or containers_conf.read_text() != text:
            containers_conf.write_text(text)
        storage_conf = self.home / "storage.conf"
        text = (
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.home / "storage"}"\n'
            f'runroot = "{self.home / "run"}"\n'
        )
        if not storage_conf.exists() or storage_conf.read_text() != text:
            storage_conf.write_text(text)
        return {
            **os.environ,
            "CONTAINERS_CONF": str(containers_conf),
            "CONTAINERS_STORAGE_CONF": str(storage_conf),
        }

    def __call__(self, *args: str, what: str | None = None) -> str:
        with self._host_cache():
            return _run(["podman", *args], env=self._configure(), what=what or f"podman {args[0]}")

    def exists(self, name: str) -> bool:
        with self._host_cache():
            out = subprocess.run(
                ["podman", "image", "exists", name], env=self._configure(), capture_output=True, check=False
            )
        return out.returncode == 0

    @contextlib.contextmanager
    def _host_cache(self) -> Iterator[None]:
        """What podman and runc make outside the configured directories whatever the settings
        say is removed again once no podman call runs any more: runc's state directory when
        empty, /var/lib/containers when it holds nothing but podman's blob cache, and the empty
        ``libpod_parent`` cgroups."""
        if shutil.which("podman") is None:
            raise ImageBuildError("podman is not installed (Debian: apt-get install podman)")
        try:
            yield
        finally:
            # Another call may still use them (a build's containers keep their state in
            # /run/runc): the last one to finish removes them. A container's conmon outlives
            # `podman run --rm` by a moment.
            deadline = time.monotonic() + 3.0
            while _podman_running() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _podman_running():
                _remove_host_state()


def _remove_host_state() -> None:
    with contextlib.suppress(OSError):
        RUNC_STATE.rmdir()
    found = {p.relative_to(HOST_STORAGE) for p in HOST_STORAGE.rglob("*")} if HOST_STORAGE.is_dir() else None
    if found is not None and found <= {Path("cache"), BLOB_CACHE}:
        shutil.rmtree(HOST_STORAGE, ignore_errors=True)
    for parent in Path("/sys/fs/cgroup").glob("*/libpod_parent"):
        # Deepest first; rmdir fails, as it should, for a cgroup a process is still in.
        for d in sorted((Path(p) for p, _, _ in os.walk(parent)), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()


def _podman_running() -> bool:
    """Whether a podman, buildah or conmon process runs on this host (by process name)."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() in ("podman", "conmon", "buildah", "storage-untar"):
                return True
    return False


def ensure_base(podman: Podman) -> str:
    """The base image's name in podman's storage, imported from the cached root filesystem."""
    name = f"{BASE_IMAGE}:{base_key()}"
    if not podman.exists(name):
        podman("import", str(base_rootfs()), name, what="podman import of the base")
    return name


# -- images from the Dockerfiles ------------------------------------------------------------------


def _context_rules(root: Path) -> tuple[list[str], list[str]]:
    """(included paths, excluded name patterns) from a ``.dockerignore`` of the shape this
    repository uses: ``*``, then ``!path`` lines, then ``**/name`` lines."""
    included, excluded = [], []
    for raw in (root / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "*":
            continue
        if line.startswith("!"):
            included.append(line[1:].rstrip("/"))
        elif line.startswith("**/"):
            excluded.append(line[3:])
        else:
            raise ImageBuildError(f".dockerignore line {line!r}: expected '*', '!path' or '**/name'")
    return included, excluded


def context_files(root: Path) -> Iterator[Path]:
    """The files the build context holds, sorted (what the image's key hashes)."""
    included, excluded = _context_rules(root)

    def kept(p: Path) -> bool:
        return not any(fnmatch.fnmatch(part, pat) for part in p.parts for pat in excluded)

    found: list[Path] = []
    for rel in included:
        top = root / rel
        if top.is_file():
            found.append(top)
        elif top.is_dir():
            found.extend(p for p in top.rglob("*") if p.is_file() and kept(p.relative_to(root)))
    yield from sorted(found)


def context_digest(root: Path) -> str:
    """A hash of the build context's files, names and contents."""
    h = hashlib.sha256()
    for p in context_files(root):
        h.update(f"\0file {p.relative_to(root)}\0".encode() + p.read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class DockerfileImage:
    """One of the project's images: its name and how ``podman build`` makes it."""

    name: str
    dockerfile: str  # relative to the repository root
    build_args: Mapping[str, str] = field(default_factory=dict)
    prebuilt: Path | None = None  # a directory of wheels or jars mounted at PREBUILT_MOUNT

    @property
    def slug(self) -> str:
        return self.name.rsplit("/", 1)[-1].replace(":", "-")

    def key(self, root: Path) -> str:
        h = hashlib.sha256()
        h.update(self.name.encode() + b"\0" + (root / self.dockerfile).read_bytes())
        for k, v in sorted(self.build_args.items()):
            h.update(f"\0arg {k}={v}".encode())
        h.update(f"\0base {base_key()}".encode())
        h.update(f"\0context {context_digest(root)}".encode())
        if self.prebuilt is not None:
            for w in sorted(p for p in self.prebuilt.iterdir() if p.is_file()):
                h.update(f"\0prebuilt {w.name} {w.stat().st_size}".encode())
        return h.hexdigest()[:KEY_LENGTH]


@dataclass(frozen=True)
class Built:
    image: DockerfileImage
    archive: Path
    seconds: float  # 0 when the cached archive was reused


def ensure_built(image: DockerfileImage, root: Path, podman: Podman | None = None) -> Built:
    """The image's OCI archive in the cache, built with podman when its inputs changed."""
    out = images_cache() / f"{image.slug}-{image.key(root)}.oci.tar"
    if out.exists():
        return Built(image, out, 0.0)
    podman = podman or Podman()
    t0 = time.monotonic()
    base = ensure_base(podman)
    args = [
        "build",
        "--network=host",
        "--layers",
        "--force-rm",
        "-f",
        str(root / image.dockerfile),
        "-t",
        image.name,
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        # The stages a RUN mounts, and that RUN, run again (see the Dockerfiles' BUILD_ID).
        "--build-arg",
        f"BUILD_ID={uuid.uuid4().hex}",
        "-v",
        f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro",
    ]
    for k, v in sorted(image.build_args.items()):
        args += ["--build-arg", f"{k}={v}"]
    if image.prebuilt is not None:
        args += ["-v", f"{image.prebuilt}:{PREBUILT_MOUNT}:ro"]
    podman(*args, str(root), what=f"podman build of {image.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    # Uncompressed: gzip of a multi-GB layer takes minutes here, and the node would unpack it.
    podman(
        "save", "--format", "oci-archive", "--uncompressed", "-o", str(partial), image.name,
        what=f"podman save {image.name}",
    )  # fmt: skip
    partial.rename(out)
    # Older archives of the same image are of no further use.
    # Exactly <slug>-<key>: another image's slug may start with this one's.
    for old in images_cache().glob(f"{image.slug}-{'?' * KEY_LENGTH}.oci.tar"):
        if old != out:
            old.unlink()
    seconds = time.monotonic() - t0
    log.info("Built %s in %.0f s (%s)", image.name, seconds, out.name)
    return Built(image, out, seconds)


# -- the project's images -------------------------------------------------------------------------

HOROVOD_VERSION = "0.28.1"  # scripts/build-horovod.sh's
PYPI_INDEX = "https://pypi.org/simple"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _chart_image(root: Path, key: str) -> str:
    """``repository:appVersion`` of one of the chart's images, so that the chart's defaults
    name what was built."""
    chart = root / "charts" / "gyre"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    version = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]
    return f"{values[key]['image']['repository']}:{version}"


def host_torch() -> str:
    """The version of the torch this interpreter has (``2.4.1`` or ``2.4.1+cpu``)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError as e:
        raise ImageBuildError("torch is not installed here: run `make setup` first") from e


def horovod_wheels(torch_version: str) -> Path:
    """The directory of the Horovod wheel scripts/build-horovod.sh built against this torch."""
    d = cache_root() / "horovod" / f"{HOROVOD_VERSION}-torch{torch_version.split('+')[0]}-cpu"
    if not any(d.glob(f"horovod-{HOROVOD_VERSION}-*.whl")):
        raise ImageBuildError(
            f"no Horovod {HOROVOD_VERSION} wheel in {d}: run `make setup` (scripts/build-horovod.sh) first"
        )
    return d


def operator_image(root: Path) -> DockerfileImage:
    return DockerfileImage(_chart_image(root, "operator"), "images/operator/Dockerfile")


def runtime_image(root: Path) -> DockerfileImage:
    """The runtime image with the torch build the host has and the host's Horovod wheel for it
    (compiled once by setup; compiling it again in the build would take 10-20 minutes)."""
    torch_version = host_torch()
    return DockerfileImage(
        _chart_image(root, "runtime"),
        "images/runtime/Dockerfile",
        build_args={
            "INSTALL_TORCH": "true",
            "TORCH_VERSION": torch_version.split("+")[0],
            # A "+cpu" local version comes from PyTorch's CPU index, a plain one from PyPI.
            "TORCH_INDEX_URL": TORCH_CPU_INDEX if "+cpu" in torch_version else PYPI_INDEX,
            "INSTALL_HOROVOD": "prebuilt",
        },
        prebuilt=horovod_wheels(torch_version),
    )


def stream_runtime_image(root: Path) -> DockerfileImage:
    """The runtime image without torch and Horovod (tag ``<version>-stream``): what a Stream's
    workloads run, a few hundred MB instead of several GB (PyPI's torch brings the CUDA
    libraries)."""
    return DockerfileImage(
        f"{_chart_image(root, 'runtime')}-stream",
        "images/runtime/Dockerfile",
        # Nor the serving, online-store and tuning clients (EXTRA_PACKAGES): no Stream uses them.
        build_args={
            "INSTALL_TORCH": "false",
            "INSTALL_HOROVOD": "false",
            "INSTALL_KSERVE": "false",
            "EXTRAS": "stream",
            "EXTRA_PACKAGES": "",
        },
    )


KAFKA_IMAGE_REPOSITORY = "gyre.local/kafka"  # the chart's integrations.kafka.image.repository for it


def kafka_image(root: Path) -> DockerfileImage:
    """A Kafka node image in ``apache/kafka``'s layout (what a Stream's managed brokers run on
    Kubernetes), from the jars the local runtime runs, tagged with their version."""
    return DockerfileImage(
        f"{KAFKA_IMAGE_REPOSITORY}:{KAFKA_VERSION}", "images/kafka/Dockerfile", prebuilt=ensure_kafka_libs()
    )


IMAGES = {
    "operator": operator_image,
    "runtime": runtime_image,
    "runtime-stream": stream_runtime_image,
    "kafka": kafka_image,
}
DEFAULT_IMAGES = ("operator", "runtime")


def project_images(root: Path, only: Sequence[str] = ()) -> list[DockerfileImage]:
    """The images of these short names (`IMAGES`; default: the operator and the runtime)."""
    unknown = set(only) - set(IMAGES)
    if unknown:
        raise ImageBuildError(f"unknown images {sorted(unknown)}: choose from {sorted(IMAGES)}")
    return [IMAGES[name](root) for name in (only or DEFAULT_IMAGES)]
