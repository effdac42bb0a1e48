"""The docs site builds strictly (warnings and broken references fail) and every Markdown link resolves.

Sphinx checks the links inside docs/ (MyST's heading anchors); the README and the folder READMEs are not
part of the site, so their relative links and ``#anchors`` are checked here against the files' headings.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = [ROOT / "README.md", ROOT / "benchmarks/README.md", ROOT / "notebooks/README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's (and MyST's) anchor of a heading: lower case, punctuation but ``-`` dropped, spaces to ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings, with those of the files it includes (MyST ``{include}``)."""
    found, fence = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```{include}"):
            found |= anchors((path.parent / line.split(maxsplit=1)[1]).resolve())
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#{1,6} ", line):
            found.add(anchor(line.lstrip("#")))
    return found


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [target for target in LINK.findall(text) if not target.startswith(("http://", "https://", "mailto:"))]


def test_anchor_follows_github():
    assert anchor("The `paw` command") == "the-paw-command"
    assert anchor("`--model.*`: PaWModule") == "--model-pawmodule"
    assert anchor("`ddp.py`: 1 vs N processes on CPU") == "ddppy-1-vs-n-processes-on-cpu"


@pytest.mark.parametrize("path", MARKDOWN, ids=[str(p.relative_to(ROOT)) for p in MARKDOWN])
def test_every_relative_link_and_anchor_resolves(path):
    broken = []
    for target in links(path):
        file, _, fragment = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    text = "\n".join(lines)
    for must in ("make train", "make test", "docs/", "| `paw/TextWorld-v0` |", "| `grpo` |"):
        assert must in text, must


@pytest.mark.slow
def test_the_docs_build_in_strict_mode_without_network(tmp_path):
    pytest.importorskip("myst_parser", reason="the docs packages are in requirements.txt and the `docs` extra")
    pytest.importorskip("furo")
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-n", "--keep-going", "-q", "-b", "html", str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    built = {p.stem for p in (tmp_path / "html").glob("*.html")}
    assert {"index", "getting-started", "iteration", "configs", "cli", "metrics", "environments", "engines", "multi-gpu",
            "faults", "security", "experiments", "benchmarks", "api", "troubleshooting", "watching"} <= built
    api = (tmp_path / "html/api.html").read_text()
    assert "PaWModule" in api and "cmae_loss" in api and "ActionEntropySelection" in api  # autodoc read the docstrings
