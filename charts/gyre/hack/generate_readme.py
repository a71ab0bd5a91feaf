"""Generates the parameter tables of `charts/gyre/README.md` from `values.yaml`.

`values.yaml` documents every value with bitnami readme-generator comments:
``## @section Title`` starts a table and ``## @param dotted.key Description`` documents a value
(a documented mapping is a leaf: its children are not listed separately). The tables are
written between the ``<!-- parameters:start -->`` and ``<!-- parameters:end -->`` markers.

    python charts/gyre/hack/generate_readme.py          # rewrite the tables
    python charts/gyre/hack/generate_readme.py --check  # exit 1 when they are stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parent.parent
VALUES = CHART_DIR / "values.yaml"
README = CHART_DIR / "README.md"
START, END = "<!-- parameters:start -->", "<!-- parameters:end -->"

SECTION = re.compile(r"^\s*## @section (?P<title>.+?)\s*$")
PARAM = re.compile(r"^\s*## @param (?P<key>[A-Za-z0-9_.]+) (?P<description>.+?)\s*$")


@dataclass(frozen=True)
class Param:
    section: str
    key: str
    description: str


def read_params(values_text: str) -> list[Param]:
    """The documented values, in file order."""
    section = ""
    params = []
    for line in values_text.splitlines():
        if match := SECTION.match(line):
            section = match["title"]
        elif match := PARAM.match(line):
            params.append(Param(section, match["key"], match["description"]))
    return params


def lookup(values: dict[str, Any], key: str) -> Any:
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def undocumented(values: dict[str, Any], documented: set[str], prefix: str = "") -> list[str]:
    """Value keys with no `@param`: a documented key covers everything beneath it."""
    missing = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if path in documented:
            continue
        if isinstance(value, dict) and value:
            missing.extend(undocumented(value, documented, f"{path}."))
        else:
            missing.append(path)
    return missing


def render_tables(params: list[Param], values: dict[str, Any]) -> str:
    lines: list[str] = []
    section = None
    for param in params:
        if param.section != section:
            section = param.section
            lines += [
                "",
                f"### {section}",
                "",
                "| Name | Description | Value |",
                "| --- | --- | --- |",
            ]
        value = json.dumps(lookup(values, param.key), sort_keys=True)
        description = param.description.replace("|", "\\|")
        lines.append(f"| `{param.key}` | {description} | `{value}` |")
    return "\n".join(lines).strip("\n")


def render_readme(readme_text: str, tables: str) -> str:
    head, _, rest = readme_text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{tables}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when README.md is stale")
    args = parser.parse_args(argv)
    values_text = VALUES.read_text()
    values = yaml.safe_load(values_text)
    params = read_params(values_text)
    missing = undocumented(values, {p.key for p in params})
    if missing:
        print(f"values without an @param line: {', '.join(missing)}", file=sys.stderr)
        return 1
    current = README.read_text()
    wanted = render_readme(current, render_tables(params, values))
    if current == wanted:
        return 0
    if args.check:
        print("README.md is stale (run charts/gyre/hack/generate_readme.py)", file=sys.stderr)
        return 1
    README.write_text(wanted)
    print(f"Wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
