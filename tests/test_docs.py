"""The manual holds: README.md stays a short start (at most 15,000 bytes), every link in the docs
points at a file (and heading) that exists, and every command they show composes as src/run.py
would compose it (the same checks of the command line, then Hydra with the same overrides, as
`--cfg job` does, in-process: some 70 subprocesses would take minutes)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from chareval import PROJECT_ROOT
from chareval.cli import check_group_options, check_override_keys
from chareval.config.compose import CONF, compose

PAGES = [PROJECT_ROOT / n for n in ("README.md", "CONTRIBUTING.md", "RELIABILITY.md")] + sorted(
    (PROJECT_ROOT / "docs").glob("*.md")
)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```(?:bash|sh|console)?\n(.*?)```", re.S)
SCRIPTS = ("src/run.py", "src/doctor.py")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def links() -> list[tuple[Path, str]]:
    found = []
    for page in PAGES:
        text = FENCE.sub("", page.read_text(encoding="utf-8"))
        for match in LINK.finditer(text):
            target = match.group(1) or match.group(2)
            if not target.startswith(("http://", "https://", "mailto:")):
                found.append((page, target))
    return found


def commands() -> list[tuple[Path, str]]:
    """Every `python src/run.py ...` / `python src/doctor.py ...` line of the docs' code blocks
    (continued lines joined, comments dropped)."""
    found = []
    for page in PAGES:
        for block in FENCE.findall(page.read_text(encoding="utf-8")):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #", 1)[0].strip()
                if re.match(r"(\$ )?([A-Z_]+=\S+ )*\S*python\S* src/(run|doctor)\.py\b", line):
                    found.append((page, line))
    return found


def test_the_readme_is_a_short_start():
    readme = (PROJECT_ROOT / "README.md").read_bytes()
    assert len(readme) <= 15_000, f"README.md is {len(readme)} bytes: move detail to docs/"
    for page in (PROJECT_ROOT / "docs").glob("*.md"):  # every page is reachable from the README
        assert f"docs/{page.name}" in readme.decode(), f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize("page,target", links(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_every_link_points_at_what_exists(page, target):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.exists(), f"{page.name}: link to {target}: no such file"
    if anchor and file.suffix == ".md":
        assert anchor in anchors(file), f"{page.name}: link to {target}: no such heading in {file.name}"


PLACEHOLDER = "PLACEHOLDER"


def overrides_of(line: str) -> list[str]:
    """The overrides of a documented command: Hydra's flags dropped, a sweep's first value kept
    (`persona=a,b` composes as `persona=a`), a placeholder (<run id>) given a value, and an override
    whose whole value is a placeholder (persona=<name>) left out."""
    words = shlex.split(re.sub(r"<[^>]*>", PLACEHOLDER, line))
    words = words[next(i for i, w in enumerate(words) if w.endswith(SCRIPTS)) + 1 :]
    args = [w for w in words if "=" in w and not w.startswith("-") and w.split("=", 1)[1] != PLACEHOLDER]
    parsed = OverridesParser.create().parse_overrides(args)
    return [
        f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else a
        for o, a in zip(parsed, args, strict=True)
    ]


def test_the_docs_show_commands():
    assert len(commands()) >= 40


@pytest.mark.parametrize("page,line", commands(), ids=lambda v: v.name if isinstance(v, Path) else v[:80])
def test_every_documented_command_parses(page, line):
    args = overrides_of(line)
    check_override_keys(args, CONF)
    check_group_options(args, CONF)
    compose(args, hydra=True)
