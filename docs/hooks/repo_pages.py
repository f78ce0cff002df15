"""mkdocs hook: pages that live outside ``docs/`` (CONTRIBUTING.md, manifests/SCHEMA.md).

Reads each file of ``PAGES`` from the repository (the folder holding mkdocs.yml) and adds it
to the build as a generated page; writes nothing into the tree. Links are written for GitHub,
relative to the file that holds them (``../manifests/SCHEMA.md`` in ``docs/align.md``,
``docs/methods.md`` in ``CONTRIBUTING.md``); ``on_page_markdown`` rewrites every relative
link whose target is a page of the site (a file under ``docs/`` or one of ``PAGES``) into
the site's own path, anchors kept, and leaves every other link as written.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

# repository path -> path of the page in the site
PAGES = {
    "CONTRIBUTING.md": "contributing.md",
    "manifests/SCHEMA.md": "schema.md",
}

_LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(\))")


def _root(config: Any) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def _docs_prefix(config: Any) -> str:
    return Path(config["docs_dir"]).resolve().relative_to(_root(config)).as_posix()


def on_files(files: Files, config: Any) -> Files:
    root = _root(config)
    for repo_path, site_path in PAGES.items():
        files.append(
            File.generated(config, site_path, content=(root / repo_path).read_text("utf-8"))
        )
    return files


def _repo_path_of_page(src_uri: str, docs: str) -> str:
    for repo_path, site_path in PAGES.items():
        if site_path == src_uri:
            return repo_path
    return f"{docs}/{src_uri}"


def _site_path(repo_target: str, docs: str) -> str | None:
    if repo_target in PAGES:
        return PAGES[repo_target]
    if repo_target.startswith(docs + "/"):
        return repo_target[len(docs) + 1 :]
    return None


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    docs = _docs_prefix(config)
    here = _repo_path_of_page(page.file.src_uri, docs)
    site_here = posixpath.dirname(page.file.src_uri)

    def rewrite(m: re.Match[str]) -> str:
        target = m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            return m.group(0)
        repo_target = posixpath.normpath(posixpath.join(posixpath.dirname(here), target))
        site = _site_path(repo_target, docs)
        if site is None:
            return m.group(0)
        new = posixpath.relpath(site, site_here or ".")
        return f"{m.group(1)}{new}{m.group(3) or ''}{m.group(4)}"

    return _LINK.sub(rewrite, markdown)
