"""Check your answer to an exercise: `python tutorials/exercises/check.py NAME` (or `all`).

    python tutorials/exercises/check.py softmax_vjp               # your ex_softmax_vjp.py
    python tutorials/exercises/check.py all                       # every exercise
    python tutorials/exercises/check.py softmax_vjp --solution    # the reference solution

Prints PASS with a summary, or FAIL with what is wrong; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from checks import CHECKS  # noqa: E402


def load(name: str, solution: bool = False):
    """The student's module `ex_NAME.py` (or the solution's), loaded from its file."""
    path = HERE / ("solutions" if solution else "") / f"ex_{name}.py"
    spec = importlib.util.spec_from_file_location(f"ex_{name}{'_solution' if solution else ''}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name: str, solution: bool = False) -> tuple[bool, str]:
    """(passed, message) for one exercise."""
    try:
        return True, CHECKS[name](load(name, solution))
    except NotImplementedError as exc:
        return False, f"not done yet: {exc}"
    except Exception as exc:  # an AssertionError from the check, or an error in the answer
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return False, f"{type(exc).__name__}: {exc}  ({Path(where.filename).name}:{where.lineno})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=[*CHECKS, "all"])
    p.add_argument("--solution", action="store_true", help="check the reference solution instead")
    args = p.parse_args(argv)
    names = list(CHECKS) if args.name == "all" else [args.name]
    failed = 0
    for name in names:
        ok, message = run(name, args.solution)
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name}: {message}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
