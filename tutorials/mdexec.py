"""Run a Markdown tutorial chapter and check (or refresh) the outputs printed in its text.

A chapter is plain Markdown. Its ```python blocks run in order, in one namespace, like cells of a
notebook. A block may be followed directly by an ```output block holding what that code prints; the
tests check the two agree, so the text can never drift from the code. Other fences (```bash, ```text)
are shown, not run.

    python tutorials/mdexec.py tutorials/01-autograd.md            # check: exit 1 on any mismatch
    python tutorials/mdexec.py --update tutorials/01-autograd.md   # rewrite the output blocks

Code runs with the chapter's folder as working directory, so pictures it saves to `images/...` land
next to the text that shows them. (The tests run a copy in a temporary folder instead, so checking a
chapter never changes the repository.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)


@dataclass
class Cell:
    code: str
    code_line: int  # 1-based line of the opening fence, for error messages
    output: str | None  # expected output, None if the block has no output block
    output_span: tuple[int, int] | None  # character span of the output block's body
    insert_at: int  # character position right after the code block (where a new output block goes)


def parse(text: str) -> list[Cell]:
    cells: list[Cell] = []
    fences = list(FENCE.finditer(text))
    for i, m in enumerate(fences):
        if m.group(1) != "python":
            continue
        nxt = fences[i + 1] if i + 1 < len(fences) else None
        # An output block belongs to this cell only if nothing but blank lines separates them.
        if nxt is not None and nxt.group(1) == "output" and text[m.end() : nxt.start()].strip() == "":
            output, span = nxt.group(2), nxt.span(2)
        else:
            output, span = None, None
        cells.append(Cell(m.group(2), text.count("\n", 0, m.start()) + 1, output, span, m.end()))
    return cells


def _normalise(s: str) -> str:
    return "\n".join(line.rstrip() for line in s.strip("\n").splitlines())


def run(path: Path, workdir: Path | None = None) -> list[tuple[Cell, str]]:
    """Execute every python cell of `path` (in `workdir`, default the chapter's folder); return the
    cells with what each printed. A cell that raises stops the chapter with the cell's line number."""
    text = path.read_text(encoding="utf-8")
    namespace: dict = {"__name__": "__tutorial__"}
    results = []
    old_cwd = os.getcwd()
    os.chdir(workdir or path.parent)
    try:
        for cell in parse(text):
            buffer = io.StringIO()
            try:
                with contextlib.redirect_stdout(buffer):
                    exec(compile(cell.code, f"{path.name}:{cell.code_line}", "exec"), namespace)
            except Exception as exc:
                raise RuntimeError(
                    f"{path.name}, code block at line {cell.code_line} raised:\n{traceback.format_exc()}"
                ) from exc
            results.append((cell, buffer.getvalue()))
    finally:
        os.chdir(old_cwd)
    return results


def mismatches(results: list[tuple[Cell, str]]) -> list[str]:
    """Cells whose printed output differs from their output block (or that print with no block)."""
    problems = []
    for cell, printed in results:
        if cell.output is None:
            if printed.strip():
                problems.append(f"block at line {cell.code_line} prints output but has no ```output block")
        elif _normalise(printed) != _normalise(cell.output):
            problems.append(
                f"block at line {cell.code_line}: the text says\n{cell.output}\nbut the code printed\n{printed}"
            )
    return problems


def update(path: Path) -> None:
    """Rewrite the output blocks of `path` with what the code prints now."""
    results = run(path)
    text = path.read_text(encoding="utf-8")
    # Edit from the end so earlier character positions stay valid.
    for cell, printed in reversed(results):
        body = printed if printed.endswith("\n") or not printed else printed + "\n"
        if cell.output_span is not None:
            start, end = cell.output_span
            text = text[:start] + body + text[end:]
        elif printed.strip():
            text = text[: cell.insert_at] + "\n\n```output\n" + body + "```" + text[cell.insert_at :]
    path.write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="+", type=Path)
    parser.add_argument("--update", action="store_true", help="rewrite the output blocks instead of checking")
    args = parser.parse_args(argv)
    failed = False
    for path in args.chapters:
        if args.update:
            update(path)
            print(f"updated {path}")
            continue
        problems = mismatches(run(path))
        for p in problems:
            print(f"{path}: {p}")
        failed |= bool(problems)
        print(f"{path}: {'FAILED' if problems else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
