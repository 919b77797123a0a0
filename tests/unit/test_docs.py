"""The docs stay true to the code: the CLI reference is regenerated from ``--help`` and must
match, the README stays a front page whose links resolve, and CI runs the README's command 2."""

from __future__ import annotations

import importlib.util
import re
import sys
from types import ModuleType

import click
import pytest

from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 200


def _cli_reference() -> ModuleType:
    """scripts/cli_reference.py, imported in process (scripts/ is not a package)."""
    name = "cli_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_the_cli_reference_is_current() -> None:
    ref = _cli_reference()
    written = ref.REFERENCE.read_text(encoding="utf-8")
    assert written == ref.render(), "docs/cli.md is stale: run scripts/cli_reference.py"


def test_every_command_has_its_section_and_help_in_the_cli_reference() -> None:
    ref = _cli_reference()
    sections = set(re.findall(r"^## (.+)$", ref.REFERENCE.read_text(encoding="utf-8"), re.M))
    paths = {path for path, _ in ref.commands()}
    assert paths - sections == set()  # a command with no section
    assert sections - paths == set()  # a section of a command that no longer exists
    assert len(paths) > 30
    for path, ctx in ref.commands():
        assert ctx.command.get_short_help_str().strip(), f"{path} has no help text"


def test_the_cli_reference_does_not_depend_on_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = _cli_reference()
    text = ref.render()
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("ORCHESTRATE_DB", "elsewhere.db")
    assert ref.render() == text


def test_hidden_commands_and_options_stay_out_of_the_cli_reference() -> None:
    ref = _cli_reference()

    @click.group()
    def top() -> None:
        """Top."""

    @top.command()
    @click.option("--secret", hidden=True)
    def shown(secret: str | None) -> None:
        """Shown."""

    @top.command(hidden=True)
    def internal() -> None:
        """Internal."""

    assert [path for path, _ in ref.commands(top, "top")] == ["top", "top shown"]
    assert "--secret" not in "".join(c.command.get_help(c) for _, c in ref.commands(top, "top"))


def test_the_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md is {len(lines)} lines: move detail to docs/"


def _relative_links(text: str) -> list[str]:
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [link for link in links if not re.match(r"[a-z]+:", link)]


def test_the_readmes_links_resolve() -> None:
    links = _relative_links(README.read_text(encoding="utf-8"))
    assert links
    for link in links:
        target = link.partition("#")[0]
        assert (REPO / target).exists(), f"README.md links to {link}, which does not exist"
    # the README names every page of the site
    pages = {p.relative_to(REPO).as_posix() for p in DOCS.glob("*.md")} - {"docs/changelog.md"}
    assert pages - {link.partition("#")[0] for link in links} == set()


def test_ci_runs_readme_command_2() -> None:
    text = README.read_text(encoding="utf-8")
    block = text[text.index("```bash\n# 1.") :]
    block = block[: block.index("```\n", 8)]
    command_2 = block.split("# 2.", 1)[1].splitlines()[1]
    assert command_2.startswith("./scripts/setup.sh --test && ")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command_2 in ci


def test_the_site_includes_what_the_readme_marks() -> None:
    """The snippets the docs include from the README exist there, each once."""
    readme = README.read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        for section in re.findall(r'^--8<-- "README\.md:(\w+)"$', page.read_text("utf-8"), re.M):
            assert readme.count(f"--8<-- [start:{section}]") == 1, (page.name, section)
            assert readme.count(f"--8<-- [end:{section}]") == 1, (page.name, section)


def test_the_docs_build_config_names_every_page() -> None:
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    named = set(re.findall(r"^\s+- (?:[^:\n]+: )?(\S+\.md)$", config, re.M))
    assert {p.name for p in DOCS.glob("*.md")} == named
    assert re.search(r"^strict: true$", config, re.M)
    assert "/site/" in (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()
