"""Superclass files and reports: the JSON a run writes, the .npz of predictions made elsewhere, and the
balance and Table-1-style table printed beside them."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from tinymoe.atomic import atomic_write_text
from tinymoe.superclasses.algorithm import _check_assignment, _check_count

__all__ = [
    "GroupBalance",
    "group_balance",
    "superclass_table",
    "Superclasses",
    "SuperclassFileError",
    "save_superclasses",
    "load_superclasses",
    "load_predictions",
]

FILE_FORMAT = "tinymoe-superclasses"
FILE_VERSION = 1


# ----------------------------------------------------------------------------------------------------
# Reporting: balance and a table like the paper's Table 1
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupBalance:
    """Sizes of the superclasses (classes per group). Even sizes let the experts share the classes evenly."""

    sizes: np.ndarray  # (n_groups,) int64
    min: int
    max: int
    mean: float
    std: float

    def __str__(self) -> str:
        return (
            f"{self.sizes.size} superclasses of {self.min}-{self.max} classes "
            f"(mean {self.mean:.1f}, std {self.std:.1f})"
        )

    def as_dict(self) -> dict:
        return {"sizes": self.sizes.tolist(), "min": self.min, "max": self.max, "mean": self.mean, "std": self.std}


def group_balance(assignment, n_groups: int | None = None) -> GroupBalance:
    """Group sizes of an assignment (class -> group), with min, max, mean and standard deviation.

    n_groups defaults to max(assignment) + 1; pass it to count trailing empty groups as size 0.
    """
    where = "group_balance"
    assignment = _check_assignment(assignment, where)
    if n_groups is None:
        n_groups = int(assignment.max()) + 1
    n_groups = _check_count(n_groups, "n_groups", where)
    if assignment.max() >= n_groups:
        raise ValueError(f"{where}: superclass id {int(assignment.max())} is out of range for n_groups={n_groups}")
    sizes = np.bincount(assignment, minlength=n_groups).astype(np.int64)
    return GroupBalance(sizes, int(sizes.min()), int(sizes.max()), float(sizes.mean()), float(sizes.std()))


def _short_name(name: str) -> str:
    """First synonym of a WordNet entry: words.txt lists several, e.g. 'goldfish, Carassius auratus'."""
    return name.split(",")[0].strip() or name.strip()


def superclass_table(assignment, class_names: Sequence[str], per_group: int = 5) -> str:
    """A plain-text table like the paper's Table 1: one row per superclass with a few of its classes.

    Each row shows the superclass id, its size and the first `per_group` member classes (in class
    order), each by its first synonym ('goldfish, Carassius auratus' -> 'goldfish'), then "(+N more)".
    """
    where = "superclass_table"
    assignment = _check_assignment(assignment, where)
    if len(class_names) != assignment.size:
        raise ValueError(
            f"{where}: {len(class_names)} class names for {assignment.size} classes; give one name per class"
        )
    per_group = _check_count(per_group, "per_group", where)
    balance = group_balance(assignment)
    rows = [("superclass", "size", "classes")]
    for group, size in enumerate(balance.sizes):
        members = np.flatnonzero(assignment == group)
        shown = ", ".join(_short_name(str(class_names[c])) for c in members[:per_group])
        if size > per_group:
            shown += f" (+{size - per_group} more)"
        rows.append((str(group), str(size), shown))
    id_width = max(len(r[0]) for r in rows)
    size_width = max(len(r[1]) for r in rows)
    lines = [f"{r[0]:>{id_width}}  {r[1]:>{size_width}}  {r[2]}".rstrip() for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Files: superclasses JSON, predictions npz
# ----------------------------------------------------------------------------------------------------


class SuperclassFileError(ValueError):
    """A superclasses JSON file that cannot be read: not JSON, wrong format, or inconsistent content."""


@dataclass(frozen=True)
class Superclasses:
    """A loaded superclass file: `assignment[c]` is the superclass of class c (in wnids order)."""

    assignment: np.ndarray  # (C,) int64, values 0..num_superclasses-1, all groups non-empty
    wnids: tuple[str, ...]
    names: tuple[str, ...]
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.assignment.size)

    @property
    def num_superclasses(self) -> int:
        return int(self.assignment.max()) + 1

    def members(self, superclass: int) -> np.ndarray:
        """Class indices of one superclass, ascending."""
        return np.flatnonzero(self.assignment == superclass)


def _check_superclass_content(assignment: np.ndarray, wnids, names, where: str) -> None:
    num_classes = assignment.size
    for what, values in (("wnids", wnids), ("names", names)):
        if len(values) != num_classes:
            raise ValueError(f"{where}: {len(values)} {what} for {num_classes} classes; give one per class")
        if not all(isinstance(v, str) for v in values):
            raise TypeError(f"{where}: {what} must all be strings")
    if len(set(wnids)) != len(wnids):
        duplicates = sorted({w for w in wnids if list(wnids).count(w) > 1})
        raise ValueError(f"{where}: wnids must be unique, repeated: {duplicates[:5]}")
    sizes = np.bincount(assignment)
    if np.any(sizes == 0):
        raise ValueError(
            f"{where}: superclass ids must run 0..{sizes.size - 1} with no gaps, but superclasses "
            f"{np.flatnonzero(sizes == 0).tolist()} have no classes"
        )


def save_superclasses(
    path, assignment, wnids: Sequence[str], names: Sequence[str], meta: dict | None = None
) -> None:
    """Write class -> superclass as JSON (atomically): one record per class with its index, wnid, name
    and superclass, plus `meta` (any JSON-serialisable dict: seed, accuracy, balance...).

    The file looks like:

        {"format": "tinymoe-superclasses", "version": 1, "num_classes": 200, "num_superclasses": 10,
         "classes": [{"index": 0, "wnid": "n01443537", "name": "goldfish, Carassius auratus",
                      "superclass": 3}, ...],
         "meta": {...}}
    """
    where = "save_superclasses"
    assignment = _check_assignment(assignment, where)
    wnids, names = list(wnids), list(names)
    _check_superclass_content(assignment, wnids, names, where)
    document = {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "num_classes": int(assignment.size),
        "num_superclasses": int(assignment.max()) + 1,
        "classes": [
            {"index": i, "wnid": w, "name": n, "superclass": int(g)}
            for i, (w, n, g) in enumerate(zip(wnids, names, assignment))
        ],
        "meta": dict(meta or {}),
    }
    # Serialise first: an unserialisable meta fails here, before any file is touched.
    try:
        text = json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{where}: meta must be JSON-serialisable (numbers, strings, lists, dicts): {error}"
        ) from None
    atomic_write_text(path, text)


def load_superclasses(path) -> Superclasses:
    """Read a file written by `save_superclasses`; a malformed file raises SuperclassFileError naming
    the file and what is wrong with it."""
    path = os.fspath(path)

    def fail(problem: str):
        raise SuperclassFileError(f"load_superclasses: {path}: {problem}")

    if not os.path.exists(path):
        raise FileNotFoundError(
            f"load_superclasses: {path} does not exist; create it with "
            f"`python -m tinymoe.superclasses ... --out {path}`"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as error:
        fail(f"not valid JSON ({error})")
    except UnicodeDecodeError as error:
        fail(f"not UTF-8 text ({error})")
    if not isinstance(document, dict):
        fail(f"expected a JSON object at the top level, got {type(document).__name__}")
    if document.get("format") != FILE_FORMAT:
        fail(f"not a superclasses file (format is {document.get('format')!r}, expected {FILE_FORMAT!r})")
    if document.get("version") != FILE_VERSION:
        fail(f"unsupported version {document.get('version')!r} (this tinymoe reads version {FILE_VERSION})")
    for key in ("num_classes", "num_superclasses", "classes"):
        if key not in document:
            fail(f"missing key {key!r}")
    records = document["classes"]
    if not isinstance(records, list) or not records:
        fail("'classes' must be a non-empty list of class records")
    if document["num_classes"] != len(records):
        fail(f"num_classes is {document['num_classes']!r} but 'classes' holds {len(records)} records")
    wnids, names, assignment = [], [], []
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            fail(f"class record {position} is not an object")
        missing = [k for k in ("index", "wnid", "name", "superclass") if k not in record]
        if missing:
            fail(f"class record {position} lacks {missing}")
        if record["index"] != position or isinstance(record["index"], bool):
            fail(
                f"class record {position} has index {record['index']!r}; "
                "records must be in class order 0, 1, 2, ..."
            )
        group = record["superclass"]
        if not isinstance(group, int) or isinstance(group, bool) or group < 0:
            fail(f"class record {position} has superclass {group!r}; expected an integer >= 0")
        if not isinstance(record["wnid"], str) or not isinstance(record["name"], str):
            fail(f"class record {position}: wnid and name must be strings")
        wnids.append(record["wnid"])
        names.append(record["name"])
        assignment.append(group)
    assignment = np.asarray(assignment, dtype=np.int64)
    if document["num_superclasses"] != int(assignment.max()) + 1:
        fail(
            f"num_superclasses is {document['num_superclasses']!r} "
            f"but the largest superclass id is {int(assignment.max())}"
        )
    try:
        _check_superclass_content(assignment, wnids, names, "load_superclasses")
    except (TypeError, ValueError) as error:
        fail(str(error).removeprefix("load_superclasses: "))
    meta = document.get("meta", {})
    if not isinstance(meta, dict):
        fail(f"'meta' must be an object, got {type(meta).__name__}")
    return Superclasses(assignment, tuple(wnids), tuple(names), meta)


def load_predictions(path) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Read held-out predictions from an .npz with arrays `labels` (N,), `predictions` (N,) (integer
    class indices), `wnids` (C,) strings and optionally `names` (C,) strings (default: the wnids).

    This is how predictions made elsewhere (another framework, a notebook) enter the routine.
    Returns (labels, predictions, wnids, names).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_predictions: {path} does not exist")
    required = ("labels", "predictions", "wnids")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"load_predictions: {path} is not a readable .npz file ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"load_predictions: {path} holds a single array; expected an .npz with arrays {list(required)}"
        )
    with archive:
        missing = [k for k in required if k not in archive.files]
        if missing:
            raise ValueError(
                f"load_predictions: {path} lacks arrays {missing}; it needs labels (N,), predictions (N,) "
                f"and wnids (C,), has {sorted(archive.files)}"
            )
        try:  # object arrays would need pickle, which is refused for safety
            arrays = {key: archive[key] for key in archive.files if key in required + ("names",)}
        except ValueError as error:
            raise ValueError(f"load_predictions: {path}: {error}; store strings as a NumPy str array") from None
    labels, predictions = arrays["labels"], arrays["predictions"]
    wnids = [str(w) for w in arrays["wnids"].reshape(-1)]
    names = [str(n) for n in arrays["names"].reshape(-1)] if "names" in arrays else list(wnids)
    return labels, predictions, wnids, names
