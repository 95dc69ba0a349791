"""The book's table of contents and notebooks are laid out the way the rendered book needs them.

Cheap, static checks that hold for every chapter, including the ones added later; the rendered
pages themselves are checked in a browser by ``tests/check_rendered_book.py`` after the build.
"""
import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_rendered_book import toc_docnames  # noqa: E402  (one reading of _toc.yml for both checks)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())


def _toc_files():
    """The documents the table of contents lists after the root, in reading order."""
    return toc_docnames(ROOT / "_toc.yml")[1:]


NOTEBOOKS = [f for f in _toc_files() if (ROOT / f"{f}.ipynb").is_file()]


def test_front_and_back_matter_in_place():
    files = _toc_files()
    assert toc_docnames(ROOT / "_toc.yml")[0] == "book/intro"
    assert files[0] == "book/preface", "the preface comes before chapter 1"
    assert files[-2:] == ["book/results", "book/references"], "results and references come last"
    assert NOTEBOOKS and files.index(NOTEBOOKS[0]) == 1


def test_every_notebook_is_in_the_toc():
    listed = {f"{f}.ipynb" for f in _toc_files()}
    on_disk = {p.relative_to(ROOT).as_posix() for p in (ROOT / "book").glob("*.ipynb")}
    assert on_disk <= listed, f"not in _toc.yml, so not in the book: {sorted(on_disk - listed)}"


@pytest.mark.parametrize("docname", NOTEBOOKS)
def test_colab_setup_cell_hidden_and_title_first(docname):
    cells = json.loads((ROOT / f"{docname}.ipynb").read_text())["cells"]
    setup = cells[0]
    assert setup["cell_type"] == "code" and "google.colab" in "".join(setup["source"]), \
        "a chapter opens with the Colab setup cell"
    assert "git clone" in "".join(setup["source"]) and "CAIT_EDU_DATA" in "".join(setup["source"]), \
        "in Colab the chapter needs the repository's data/ (result files, kept models), not only the package"
    assert "remove-cell" in setup.get("metadata", {}).get("tags", []), \
        "the Colab setup cell is tagged remove-cell, so the page opens with its title"
    shown = [c for c in cells if "remove-cell" not in c.get("metadata", {}).get("tags", [])]
    assert shown[0]["cell_type"] == "markdown" and "".join(shown[0]["source"]).startswith("# "), \
        "the first cell the book shows is the chapter's title"


def test_offline_rendering_configured():
    extensions = CONFIG["sphinx"]["extra_extensions"]
    assert "sphinx-mathjax-offline" in extensions and "cait_edu.book_ext" in extensions
    requirements = (ROOT / "requirements.txt").read_text()
    assert "sphinx-mathjax-offline" in requirements
    assert "book/results.md" in (ROOT / ".gitignore").read_text().splitlines()
