"""The images install what their commands import (read from the Dockerfiles; no Docker needed).

Docker is not on every machine that runs the tests, so these read the Dockerfiles the way
the build does: instructions joined across line continuations, then the commands in them.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shlex
import sys
import tomllib
from pathlib import Path

from gyre.manifests import repo_root

ROOT = repo_root()
PACKAGE = ROOT / "operators"


def instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, each on one line (continuations joined, comments dropped)."""
    out: list[str] = []
    current = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current = f"{current} {line[:-1].strip()}" if line.endswith("\\") else f"{current} {line}"
        if not line.endswith("\\"):
            out.append(current.strip())
            current = ""
    return out


def shell_commands(instruction: str) -> list[list[str]]:
    """The simple commands of a RUN instruction, split on ``&&``/``;``, as argument lists."""
    lexer = shlex.shlex(re.sub(r"^RUN\s+(--\S+\s+)*", "", instruction), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", ";", "||", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def pip_commands(dockerfile: Path, verb: str) -> list[list[str]]:
    found = []
    for ins in instructions(dockerfile):
        if not ins.startswith("RUN"):
            continue
        for cmd in shell_commands(ins):
            if cmd[:2] == ["pip", verb]:
                found.append(cmd[2:])
    return found


def targets(args: list[str]) -> list[str]:
    """The positional arguments of a pip command (what it installs or builds)."""
    with_value = {"--wheel-dir", "-w", "--find-links", "-f", "--index-url", "-i", "--target", "-t"}
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in with_value:
            skip = True
        elif not a.startswith("-"):
            out.append(a)
    return out


# The extras the operator image installs beside the base: the Experiment search engine.
OPERATOR_EXTRAS = ("search",)


def base_requirements(extras: tuple[str, ...] = ()) -> set[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    deps = [*project["dependencies"], *(d for e in extras for d in project["optional-dependencies"][e])]
    return {_normalise(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in deps}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _module_file(name: str) -> Path | None:
    base = PACKAGE.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def third_party_imports(entry: str) -> set[str]:
    """Top-level non-Gyre, non-stdlib modules that ``entry`` and the Gyre modules it imports
    (at any depth, function-level imports included) import."""
    seen: set[str] = set()
    todo = [entry]
    external: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                top = n.split(".")[0]
                if top == "gyre":
                    todo.append(n)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    external.add(top)
    return external


def test_horovod_stage_sets_the_variables_the_build_script_reads() -> None:
    """The Horovod stage once set GYRE_CACHE_DIR, which scripts/build-horovod.sh never reads
    (it reads GYRE_CACHE), so the wheel went to the default cache the stage did not copy."""
    script = (ROOT / "scripts" / "build-horovod.sh").read_text()
    runs = [
        cmd
        for ins in instructions(ROOT / "images" / "runtime" / "Dockerfile")
        if ins.startswith("RUN")
        for cmd in shell_commands(ins)
        if any(a.endswith("build-horovod.sh") for a in cmd)
    ]
    assert runs, "the runtime image builds Horovod with scripts/build-horovod.sh"
    for cmd in runs:
        assigned = [a.split("=", 1)[0] for a in cmd[: cmd.index("bash")] if "=" in a]
        assert "GYRE_CACHE" in assigned, cmd
        for name in assigned:
            assert re.search(rf"\$\{{?{name}\b", script), f"build-horovod.sh does not read {name}"


def test_the_operator_image_installs_what_the_operator_imports() -> None:
    """Every library the operator's modules import is a base dependency or one of the search
    extra (Optuna, imported only when an Experiment searches), and the operator image installs
    the package with those (tests/controlplane/test_base_install.py proves the base alone
    suffices to run it)."""
    base = base_requirements(OPERATOR_EXTRAS)
    distributions = importlib.metadata.packages_distributions()
    imported = third_party_imports("gyre.operator.main")
    assert {"kopf", "kubernetes", "confluent_kafka", "pydantic"} <= imported  # the walk found them
    for module in sorted(imported):
        dists = {_normalise(d) for d in distributions.get(module, [module])}
        assert dists & base, f"the operator imports {module} ({dists}), not a base dependency"

    dockerfile = ROOT / "images" / "operator" / "Dockerfile"
    (wheel,) = pip_commands(dockerfile, "wheel")
    extras = ",".join(OPERATOR_EXTRAS)
    assert targets(wheel) == [f".[{extras}]"], wheel  # the project, dependencies from pyproject
    installs = pip_commands(dockerfile, "install")
    assert [targets(i) for i in installs] == [[f"gyre[{extras}]"]], installs  # no other extra
    for args in (wheel, *installs):
        assert "--no-deps" not in args, args
