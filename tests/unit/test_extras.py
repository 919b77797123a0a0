"""Dependencies by role: every package the code imports is declared, in the base install or in
the extra that ``orchestrator.extras`` names when it is missing; the lockfile pins them all."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from contract.errors import UsageError
from orchestrator import extras

REPO = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"contract", "orchestrator", "workers", "migrations", "tests", "benchmarks"}
# Distributions imported under another name.
IMPORT_NAMES = {"pillow": "PIL", "scikit-learn": "sklearn"}


def _project() -> dict[str, Any]:
    with open(REPO / "pyproject.toml", "rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]


def _modules(requirements: list[str]) -> set[str]:
    """Top-level modules of the requirements, leaving out the project's own extras."""
    names = (_name(r) for r in requirements)
    return {IMPORT_NAMES.get(n.lower(), n.lower()) for n in names if n != extras.DISTRIBUTION}


def _included(requirements: list[str]) -> set[str]:
    """The project's own extras that ``requirements`` include (``orchestrate-sd[a,b]``)."""
    out: set[str] = set()
    for r in requirements:
        m = re.fullmatch(rf"{re.escape(extras.DISTRIBUTION)}\[([\w,]+)\]", r)
        if m:
            out.update(m.group(1).split(","))
    return out


def _imports(folder: Path) -> dict[str, str]:
    """Top-level module -> one file importing it, for every import in ``folder``."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.partition(".")[0], str(path.relative_to(REPO)))
    return found


def test_the_extras_of_the_code_are_the_extras_of_pyproject() -> None:
    optional = _project()["optional-dependencies"]
    for extra, modules in extras.EXTRAS.items():
        assert _modules(optional[extra]) == set(modules), extra
        assert _included(optional[extra]) == set(extras.INCLUDES.get(extra, ())), extra
    assert _included(optional["all"]) == set(extras.EXTRAS)


def test_the_base_install_holds_no_extra() -> None:
    base = _modules(_project()["dependencies"])
    assert base.isdisjoint(m for mods in extras.EXTRAS.values() for m in mods)
    assert {"click", "sqlalchemy", "alembic", "rq", "redis", "jinja2", "rich"} == base


@pytest.mark.parametrize("folder", ["contract", "orchestrator", "workers", "migrations", "scripts"])
def test_every_imported_package_is_declared(folder: str) -> None:
    project = _project()
    declared = _modules(project["dependencies"])
    for extra in extras.EXTRAS:
        declared |= _modules(project["optional-dependencies"][extra])
    undeclared = {
        module: where
        for module, where in _imports(REPO / folder).items()
        if module not in declared
        and module not in sys.stdlib_module_names
        and module not in FIRST_PARTY
    }
    assert undeclared == {}  # one file each, where the package is imported


def test_the_lockfile_pins_every_declared_package() -> None:
    text = (REPO / "requirements" / "constraints.txt").read_text(encoding="utf-8")
    pinned = {line.partition("==")[0].lower() for line in text.splitlines() if "==" in line}
    project = _project()
    wanted = [
        *project["dependencies"],
        *(r for rs in project["optional-dependencies"].values() for r in rs),
    ]
    names = {_name(r).lower() for r in wanted} - {extras.DISTRIBUTION}
    assert names - pinned == set()
    assert not any(re.match(r"nvidia-|triton", p) for p in pinned)  # installs on a Mac too
    assert all("+" not in line for line in text.splitlines())  # no local builds (+cpu)


def test_a_missing_extra_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import and find_spec: not installed
    assert extras.missing("parquet") == ["pyarrow"]
    with pytest.raises(UsageError) as caught:
        extras.require("parquet", "`orchestrate export`")
    message = str(caught.value)
    assert message == (
        "`orchestrate export` needs the parquet extra (pyarrow is not installed): "
        "pip install 'orchestrate-sd[parquet]'"
    )
    assert "\n" not in message
    assert extras.extra_for("pyarrow.parquet") == "parquet"
    assert extras.extra_for("sklearn") == "coreml"
    assert extras.extra_for("yaml") is None


def test_an_extra_names_the_extras_it_includes() -> None:
    assert (
        extras.modules_of("coreml")[: len(extras.EXTRAS["diffusers"])] == extras.EXTRAS["diffusers"]
    )
    extras.require("coreml")  # the full install has all of them
