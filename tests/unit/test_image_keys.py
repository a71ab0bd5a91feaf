"""What an image's cache key covers: the inputs of its build, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from gyre.controlplane.images.podman import DockerfileImage, ImageBuildError, context_files


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / ".dockerignore").write_text("*\n!pyproject.toml\n!src/\n**/__pycache__\n**/*.pyc\n")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "src" / "__pycache__").mkdir(parents=True)
    (tmp_path / "src" / "a.py").write_text("A = 1\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "notes.txt").write_text("outside the context\n")
    return tmp_path


IMAGE = DockerfileImage("gyre.local/x:1", "Dockerfile")


def test_context_is_what_the_dockerignore_lets_through(root: Path) -> None:
    (root / "src" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert [p.relative_to(root).as_posix() for p in context_files(root)] == ["pyproject.toml", "src/a.py"]


def test_key_changes_with_a_context_file_the_dockerfile_or_a_build_argument(root: Path) -> None:
    key = IMAGE.key(root)
    assert IMAGE.key(root) == key
    (root / "src" / "a.py").write_text("A = 2\n")
    changed = IMAGE.key(root)
    assert changed != key
    (root / "Dockerfile").write_text("FROM scratch\nLABEL x=y\n")
    assert IMAGE.key(root) != changed
    with_arg = DockerfileImage(IMAGE.name, IMAGE.dockerfile, build_args={"EXTRAS": "stream"})
    assert with_arg.key(root) != IMAGE.key(root)


def test_key_ignores_what_the_build_never_sees(root: Path) -> None:
    key = IMAGE.key(root)
    (root / "notes.txt").write_text("edited\n")
    (root / "src" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\1")
    assert IMAGE.key(root) == key


def test_prebuilt_wheels_are_part_of_the_key(root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    wheels = tmp_path_factory.mktemp("wheels")
    image = DockerfileImage(IMAGE.name, IMAGE.dockerfile, prebuilt=wheels)
    key = image.key(root)
    (wheels / "horovod-0.28.1-cp311-cp311-linux_x86_64.whl").write_bytes(b"wheel")
    assert image.key(root) != key


def test_an_unsupported_dockerignore_line_is_named(root: Path) -> None:
    (root / ".dockerignore").write_text("*\n!src/\nbuild/\n")
    with pytest.raises(ImageBuildError, match="'build/'"):
        list(context_files(root))
