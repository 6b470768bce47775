"""What the tutorials say in prose is checked too, not only what their code prints.

- Every repository path a chapter (or tutorials/README.md, or the root README) names exists.
- A number quoted from a recorded result (any value in a bench/results/**.json) may appear in a
  chapter's prose only if the chapter's own code prints it: chapters read such numbers from the file
  in a code block, so tutorials/mdexec.py checks them and they cannot drift from the record.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
CHAPTERS = sorted(TUTORIALS.glob("[0-9][0-9]-*.md"))
DOCS = [*CHAPTERS, TUTORIALS / "README.md", ROOT / "README.md"]

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
# A path inside the repository: starts at one of its top-level folders (or is a top-level file).
REPO_PATH = re.compile(r"(?<![\w./-])((?:\.\./)*(?:tinymoe|bench|tests|tutorials|\.ci)/[\w./=+-]*[\w/]|README\.md|pyproject\.toml)")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
# The paper's numbers are quoted from the paper, not from bench/results.
PAPER = {"36.64", "41.30", "4.66", "3.39", "1.87", "2.72"}


def prose(text: str) -> str:
    """The text with every fenced block removed (code, output, bash, text)."""
    return FENCE.sub("", text)


def named_paths(doc: Path) -> set[Path]:
    text = doc.read_text(encoding="utf-8")
    found = set()
    for m in LINK.finditer(prose(text)):  # links in prose (code has a[i](x) calls)
        target = m.group(1)
        if "://" in target or target.startswith("mailto:"):
            continue
        found.add((doc.parent / target).resolve())
    for m in REPO_PATH.finditer(text):
        path = m.group(1)
        if "NN-" in path:  # a placeholder, e.g. tutorials/NN-name.md
            continue
        base = doc.parent if path.startswith("../") else ROOT
        found.add((base / path).resolve())
    return found


@pytest.mark.parametrize("doc", DOCS, ids=[d.relative_to(ROOT).as_posix() for d in DOCS])
def test_every_named_path_exists(doc):
    missing = sorted(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
                     for p in named_paths(doc) if not p.exists() and "images/" not in p.as_posix())
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


def recorded_numbers() -> set[str]:
    """Every number in bench/results/**/*.json, as it would be quoted (1 and 2 decimals)."""
    numbers: set[str] = set()

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, float) and 5.0 <= abs(x) <= 100.0:  # accuracies in percent
            numbers.update({f"{x:.1f}", f"{x:.2f}"})

    for path in (ROOT / "bench" / "results").rglob("*.json"):
        walk(json.loads(path.read_text(encoding="utf-8")))
    return numbers


DECIMAL = re.compile(r"(?<![\w.])[+−-]?(\d+\.\d{1,2})(?![\d])")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_numbers_quoted_from_results_are_printed_by_the_chapter(chapter):
    text = chapter.read_text(encoding="utf-8")
    printed = "\n".join(m.group(2) for m in FENCE.finditer(text) if m.group(1) == "output")
    recorded = recorded_numbers()
    unchecked = sorted({n for n in DECIMAL.findall(prose(text))
                        if n in recorded and n not in PAPER and n not in printed})
    assert not unchecked, (
        f"{chapter.name} quotes {unchecked} in its prose: numbers found in bench/results but not printed by the "
        "chapter's code. Read them from the JSON in a code block (so mdexec checks them), or drop them.")


def test_the_checks_catch_a_missing_path_and_an_unread_number(tmp_path):
    doc = tmp_path / "99-x.md"
    doc.write_text("See `bench/results/nowhere.json` and [x](../tinymoe/missing.py).\n", encoding="utf-8")
    assert any(not p.exists() for p in named_paths(doc))
    assert "25.20" in recorded_numbers()  # the base run's MoE top-1 (bench/results/study/base-seed0.json)
    assert DECIMAL.findall(prose("The MoE reaches 25.20% top-1.\n```output\n1.0\n```\n")) == ["25.20"]
