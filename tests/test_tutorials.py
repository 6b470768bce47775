"""Every tutorial chapter runs, and every output shown in its text is what its code prints.

Chapters run in a temporary copy of tutorials/ without its images/ folder, so a picture the text
shows must be made by the chapter's own code (it is never pasted in by hand).
"""

import re
import shutil
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
sys.path.insert(0, str(TUTORIALS))
import mdexec  # noqa: E402

CHAPTERS = sorted(TUTORIALS.glob("[0-9][0-9]-*.md"))
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\((images/[^)\s]+)\)")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_runs_and_its_outputs_match(chapter, tmp_path):
    if "import matplotlib" in chapter.read_text(encoding="utf-8"):  # its charts: the optional plots extra
        pytest.importorskip("matplotlib", reason='pip install -e ".[plots]"')
    work = tmp_path / "tutorials"
    shutil.copytree(TUTORIALS, work, ignore=shutil.ignore_patterns("images", "__pycache__"))
    (work / "images").mkdir()
    results = mdexec.run(work / chapter.name)
    problems = mdexec.mismatches(results)
    assert not problems, "\n\n".join(problems)
    for image in IMAGE_LINK.findall(chapter.read_text(encoding="utf-8")):
        assert (work / image).is_file(), f"{chapter.name} shows {image} but its code did not make it"
        assert (TUTORIALS / image).is_file(), f"{image} is made by the code but not committed; run mdexec --update"


def test_every_chapter_states_goals_and_exercises():
    for chapter in CHAPTERS:
        text = chapter.read_text(encoding="utf-8")
        assert "## What you will learn" in text, chapter.name
        assert "## Exercises" in text, chapter.name


def test_mdexec_catches_a_stale_output(tmp_path):
    chapter = tmp_path / "99-x.md"
    chapter.write_text("```python\nprint(1 + 1)\n```\n\n```output\n3\n```\n", encoding="utf-8")
    problems = mdexec.mismatches(mdexec.run(chapter))
    assert len(problems) == 1 and "printed\n2" in problems[0]


def test_mdexec_update_writes_the_printed_output(tmp_path):
    chapter = tmp_path / "99-x.md"
    chapter.write_text("Text.\n\n```python\nprint('hi')\n```\n\nMore.\n", encoding="utf-8")
    mdexec.update(chapter)
    assert "```output\nhi\n```" in chapter.read_text(encoding="utf-8")
    assert mdexec.mismatches(mdexec.run(chapter)) == []


def test_mdexec_reports_the_failing_block(tmp_path):
    chapter = tmp_path / "99-x.md"
    chapter.write_text("```python\nx = 1\n```\n\n```python\n1 / 0\n```\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="line 5"):
        mdexec.run(chapter)
