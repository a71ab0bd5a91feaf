"""Container images without a registry: a static C program packed as a one-layer OCI archive.

The real node's pod sandbox (the pause image) and the node tests' containers are single
static binaries, so an image is one layer holding one file. The archive is written here in
the OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``) with the image's
name in the ``io.containerd.image.name`` annotation, which is what ``ctr images import``
tags it with. Archives are cached under ``$GYRE_CACHE/images``, keyed by a hash of the
source and the name, so an unchanged image is built once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCES = Path(__file__).parent
PAUSE_IMAGE = "gyre.local/pause:1"  # containerd's `sandbox_image` on the real node
HELLO_IMAGE = "gyre.local/hello:1"  # prints a line and sleeps (see hello.c)

_MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
_MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class StaticImage:
    """An image made of one static binary compiled from ``source``, run as ``/<binary>``."""

    name: str
    source: Path
    binary: str

    def key(self) -> str:
        digest = hashlib.sha256(self.name.encode() + b"\0" + self.source.read_bytes())
        return digest.hexdigest()[:16]


PAUSE = StaticImage(PAUSE_IMAGE, SOURCES / "pause.c", "pause")
HELLO = StaticImage(HELLO_IMAGE, SOURCES / "hello.c", "hello")


def images_cache() -> Path:
    return Path(os.environ.get("GYRE_CACHE", Path.home() / ".cache" / "gyre")) / "images"


def ensure_image(image: StaticImage) -> Path:
    """The image's OCI archive in the cache, compiled (``gcc -static``) and packed if missing."""
    out = images_cache() / f"{image.binary}-{image.key()}.oci.tar"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / image.binary
        subprocess.run(["gcc", "-static", "-Os", "-s", "-o", str(binary), str(image.source)], check=True)
        partial = out.with_suffix(".partial")
        partial.write_bytes(build_oci_archive(image.name, image.binary, binary.read_bytes()))
        partial.rename(out)
    return out


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": f"sha256:{hashlib.sha256(data).hexdigest()}",
        "size": len(data),
        **extra,
    }


def build_oci_archive(name: str, binary_name: str, binary: bytes) -> bytes:
    """An OCI image-layout tarball of one image whose only file is ``/<binary_name>``.

    Deterministic (fixed mtimes, sorted JSON): the same binary gives the same digests.
    """
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        _tar_member(layer, binary_name, binary, 0o755)
    layer_bytes = layer_buf.getvalue()
    layer_digest = f"sha256:{hashlib.sha256(layer_bytes).hexdigest()}"
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": [f"/{binary_name}"], "WorkingDir": "/"},
            # Uncompressed layer: its diff id is its digest.
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": _MEDIA_MANIFEST,
            "config": _descriptor(_MEDIA_CONFIG, config),
            "layers": [_descriptor(_MEDIA_LAYER, layer_bytes)],
        },
        sort_keys=True,
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                _descriptor(
                    _MEDIA_MANIFEST,
                    manifest,
                    platform={"architecture": "amd64", "os": "linux"},
                    annotations={
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                    },
                )
            ],
        },
        sort_keys=True,
    ).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _tar_member(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        for blob in (layer_bytes, config, manifest):
            _tar_member(tar, f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}", blob)
        _tar_member(tar, "index.json", index)
    return out.getvalue()
