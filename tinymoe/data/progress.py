"""tqdm progress bars that stay quiet when nobody is watching.

`enabled=None` (the default everywhere in tinymoe.data) shows the bar only when stderr is a terminal,
so logs of batch jobs and test runs are not filled with carriage-return noise; True/False force it.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool | None = None, **kwargs) -> tqdm:
    if enabled is None:
        disable = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    else:
        disable = not enabled
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, **kwargs)
