"""The docs site's build-time pages and the rules its text follows.

Reads README.md, CONTRIBUTING.md, docs/*.md and the two mkdocs hooks in docs/hooks/; writes
nothing. The full site build (`mkdocs build --strict`) is a CI step of its own (.ci/run).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import SimpleNamespace

import typer

ROOT = Path(__file__).resolve().parents[1]


def _hook(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "hooks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_lists_every_command_with_its_options_and_defaults():
    from fernoise.cli.app import app

    page = _hook("cli_reference").render()
    root = typer.main.get_command(app)
    names = root.list_commands(root.context_class(root, info_name="fernoise"))
    assert {"align", "corrupt", "split", "train", "eval", "sweep"} <= set(names)
    headings = re.findall(r"^## (.+)$", page, re.M)
    assert headings == ["fernoise"] + [f"fernoise {n}" for n in names]
    assert "Usage: fernoise split [OPTIONS] [MANIFEST]" in page
    sections = dict(re.findall(r"^## (fernoise.*?)\n(.*?)(?=^## |\Z)", page, re.M | re.S))
    sizes = {
        name: re.search(r"^- `--image-size <int>`.*$", text, re.M)
        for name, text in sections.items()
    }
    assert sizes["fernoise train"].group(0).endswith(r"\[default: 224\]")  # as --help shows
    assert sizes["fernoise pretrain"].group(0).endswith(r"\[default: 112\]")
    assert sizes["fernoise split"] is None
    assert "runs/&lt;key&gt;/" in page  # help text is escaped, never read as HTML


def test_links_between_repository_files_become_site_links():
    hook = _hook("repo_pages")
    config = {"config_file_path": str(ROOT / "mkdocs.yml"), "docs_dir": str(ROOT / "docs")}

    def render(src_uri: str, md: str) -> str:
        page = SimpleNamespace(file=SimpleNamespace(src_uri=src_uri))
        return hook.on_page_markdown(md, page=page, config=config, files=None)

    assert (
        render("align.md", "[s](../manifests/SCHEMA.md#align) [m](methods.md)")
        == "[s](schema.md#align) [m](methods.md)"
    )
    assert (
        render("contributing.md", "[h](docs/how-it-works.md#layout) [x](https://e.org/a.md)")
        == "[h](how-it-works.md#layout) [x](https://e.org/a.md)"
    )
    assert render("index.md", "[c](../CONTRIBUTING.md)") == "[c](contributing.md)"
    assert render("index.md", "[r](../README.md)") == "[r](../README.md)"  # not a page: as written


def test_readme_and_docs_name_no_issue_numbers():
    texts = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = [
        f"{p.name}: {m.group(0)}"
        for p in texts
        for m in re.finditer(r"\bissues?\s+#?\d+", p.read_text(), re.I)
    ]
    assert found == []
