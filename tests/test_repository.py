"""The repository is whole: what its documents, scripts, configuration and comments name
as a file of the repository is in it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOPS = ("bench", "continuity", "deploy", "docs", "gateway", "portal", "requirements")
TOPS += ("roster", "scripts", "sync", "templates", "tests", ".ci")
# A path of the repository as text names it: under one of its folders, or a top-level file.
REFERENCE = re.compile(
    r"(?<![\w./-])(?:\./)?((?:" + "|".join(re.escape(t) for t in TOPS) + r")/[\w./*-]*[\w*]"
    r"|README\.md|pyproject\.toml|babel\.cfg)"
)
# Hidden folders (.git, .venv, caches, .demo) are skipped too, but for .ci.
SKIPPED_DIRECTORIES = {"__pycache__", "node_modules", "translations"}
# Paths that are named on purpose though they are not here.
ELSEWHERE = {
    "bench/results",  # .gitignore: where the benchmarks write, made when they run
    "portal/view.py",  # test_i18n makes these in a temporary tree to prove the check fails
    "templates/new/page.html",
}
# Files of the development machine, not of the repository, that nothing may rely on.
OUTSIDE = re.compile(r"/work/(?:shared|notes|main)\b")


def _text_files() -> list[Path]:
    """The repository's text files (no virtualenv, caches, or compiled catalogues)."""
    found = []
    for path in ROOT.rglob("*"):
        folders = path.relative_to(ROOT).parts[:-1]
        hidden = any(f.startswith(".") and f != ".ci" for f in folders)
        if hidden or set(folders) & SKIPPED_DIRECTORIES or not path.is_file():
            continue
        if path.suffix in {".mo", ".png", ".jpg", ".db", ".pyc", ".ico", ".woff2", ".lock"}:
            continue
        found.append(path)
    return found


def _exists(reference: str) -> bool:
    """Whether a reference (a glob when it holds ``*``) names something in the repository."""
    if "*" in reference:
        try:
            return any(ROOT.glob(reference))
        except ValueError:  # "**" inside a component: a pattern shown, not a path
            return True
    return (ROOT / reference).exists()


def test_every_path_the_repository_names_is_in_it() -> None:
    """Bug: comments and documents named files that were not in the repository (the
    recipes file of the machine the project was written on, among them)."""
    missing = []
    for path in _text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        where = path.relative_to(ROOT)
        for number, line in enumerate(text.splitlines(), 1):
            outside = OUTSIDE.search(line)
            if outside:
                missing.append(f"{where}:{number}: {outside.group(0)}")
            for found in REFERENCE.finditer(line):
                reference = found.group(1).rstrip(".")
                if reference not in ELSEWHERE and not _exists(reference):
                    missing.append(f"{where}:{number}: {reference}")
    assert missing == []
