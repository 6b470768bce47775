"""Downloading a dataset file safely: resumable, checksummed, with a progress bar.

`download_url(url, dest, md5=..., size=...)` writes to `dest.part` and renames it to `dest` only after
the size and MD5 match, so `dest` either does not exist or is complete and verified:

* An interrupted download leaves `dest.part`; the next call resumes it with an HTTP `Range` request
  (a server that ignores the range and answers 200 makes it start over from byte 0).
* A finished download whose MD5 differs from the expected one is deleted (it cannot be resumed into a
  good file) and `ChecksumError` is raised with both checksums.
* Network failures raise `DownloadError` saying where to put the file by hand, for offline machines.

Only the standard library (urllib) is used; no request is ever made unless a download is asked for.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tinymoe.data.errors import ChecksumError, DownloadError
from tinymoe.data.progress import progress_bar

CHUNK_BYTES = 1 << 20


def file_md5(path: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex MD5 of a file, read in chunks (a 250 MB file takes about a second)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _offline_hint(url: str, dest: Path, size: int | None, md5: str | None) -> str:
    facts = ", ".join(x for x in (f"{size:,} bytes" if size else "", f"md5 {md5}" if md5 else "") if x)
    return (
        f"If this machine is offline, download {url}{f' ({facts})' if facts else ''} on another machine and "
        f"copy it to {dest}, or pass the path of an existing copy (--data PATH)."
    )


def download_url(
    url: str,
    dest: str | os.PathLike,
    *,
    md5: str | None = None,
    size: int | None = None,
    progress: bool | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download `url` to `dest` (resuming `dest.part` if present) and verify it; return `dest`.

    Args:
        md5: expected hex MD5 of the complete file; None skips the check (not recommended).
        size: expected size in bytes, used for the progress bar and to detect a short download.
        progress: show a tqdm bar; None shows it only when stderr is a terminal.
        timeout: seconds to wait for the server on connect and on each read.

    If `dest` already exists it is verified (when `md5` is given) and returned without downloading.
    """
    dest = Path(dest)
    if dest.exists():
        if md5 is not None and (actual := file_md5(dest)) != md5:
            raise ChecksumError(
                f"{dest} exists but its md5 is {actual}, expected {md5}. It was not downloaded by this call, so "
                f"it is left alone: delete it to download a fresh copy, or use it directly if you trust it."
            )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:  # longer than the real file: cannot be a prefix of it
        part.unlink()
        have = 0

    if size is None or have < size:
        request = urllib.request.Request(url, headers={"User-Agent": "tinymoe"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have and size is None:  # "range not satisfiable": the part file is complete
                response = None
            elif exc.code == 416 and have:  # the server's file is shorter than `size`: the part is useless
                part.unlink()
                raise DownloadError(
                    f"downloading {url}: the server refused to resume at byte {have:,} although the file should have "
                    f"{size:,} bytes; the partial file was deleted, run again to start over."
                ) from None
            else:
                raise DownloadError(
                    f"downloading {url} failed: HTTP {exc.code} {exc.reason}. {_offline_hint(url, dest, size, md5)}"
                ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(
                f"cannot download {url}: {reason}. {_offline_hint(url, dest, size, md5)}"
            ) from None
        if response is not None:
            with response:
                if have and response.status != 206:  # the server ignored the range: start from byte 0
                    have = 0
                total = size
                if total is None and response.headers.get("Content-Length"):
                    total = have + int(response.headers["Content-Length"])
                mode = "ab" if have else "wb"
                try:
                    with open(part, mode) as f, progress_bar(
                        total=total, desc=dest.name, unit="B", enabled=progress, unit_scale=True, initial=have
                    ) as bar:
                        while block := response.read(CHUNK_BYTES):
                            f.write(block)
                            bar.update(len(block))
                except (OSError, http.client.HTTPException) as exc:  # dropped mid-way: keep the part to resume from
                    raise DownloadError(
                        f"download of {url} was interrupted after {part.stat().st_size:,} bytes ({exc}); "
                        f"run again to resume from {part}. {_offline_hint(url, dest, size, md5)}"
                    ) from None

    got = part.stat().st_size
    if size is not None and got < size:
        raise DownloadError(
            f"download of {url} stopped at {got:,} of {size:,} bytes; run again to resume from {part}."
        )
    if md5 is not None and (actual := file_md5(part)) != md5:
        part.unlink()  # a complete file with the wrong content cannot be repaired by resuming
        raise ChecksumError(
            f"the file downloaded from {url} has md5 {actual}, expected {md5}; it was deleted. "
            f"Run again to retry; if it keeps failing the server copy has changed or the connection corrupts data. "
            f"{_offline_hint(url, dest, size, md5)}"
        )
    if size is not None and got != size:
        part.unlink()
        raise ChecksumError(f"the file downloaded from {url} has {got:,} bytes, expected {size:,}; it was deleted.")
    os.replace(part, dest)
    return dest
