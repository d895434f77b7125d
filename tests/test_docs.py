"""The README and docs/ stay true: every link to a file of the repository resolves, every module
named in backticks imports (and a named attribute exists), the README stays what a newcomer needs
(at most 350 lines), and its example pipeline compiles. (The reference pages under
docs/reference/ are generated: the component staleness test covers them.)"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _links(page: Path):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if not re.match(r"[a-z]+:", target) and not target.startswith("#"):
            yield target.split("#")[0]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_to_the_repository_resolves(page):
    missing = [t for t in _links(page) if not (page.parent / t).exists()]
    assert missing == [], f"{page.relative_to(ROOT)} links to missing files: {missing}"


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_named_in_backticks_exists(page):
    from advpatch.tracking import faults, runs

    tags = {v for m in (runs, faults) for k, v in vars(m).items() if k.startswith("TAG_")}  # MLflow tags, not modules
    names = set(re.findall(r"`(advpatch(?:\.\w+)+)`", page.read_text())) - tags
    stale = sorted(n for n in names if not _resolves(n))
    assert stale == [], f"{page.relative_to(ROOT)} names what does not exist: {stale}"


def test_the_readme_is_what_a_newcomer_needs():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 350
    for needed in ("make demo", "make test", "docs/cluster.md", "docs/reference/components.md"):
        assert needed in text, needed


def test_the_readmes_example_pipeline_compiles(tmp_path):
    from kfp import compiler

    (block,) = [b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
                if "@dsl.pipeline" in b]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec", dont_inherit=True), namespace)
    compiler.Compiler().compile(namespace["my_pipeline"], str(tmp_path / "p.yaml"))
    assert (tmp_path / "p.yaml").stat().st_size > 1000
