"""Decoding image files into uint8 RGB arrays, one at a time or many in parallel.

Two things matter here beyond calling Pillow:

* **Errors name the file.** A truncated or corrupt image raises `ImageDecodeError` saying which file
  (for a zip, which member of which zip) and what to do, instead of an OSError from deep inside Pillow.
  A truncated JPEG is an error, not a warning: silently training on half-grey images is worse than
  stopping. (If a program sets `PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`, Pillow itself stops
  reporting truncation and so does this module.)
* **Speed.** Tiny ImageNet's images are ~1.7 KB JPEGs; decoding one costs ~0.15 ms, and Pillow releases
  the GIL while it decodes, so a small thread pool gets part of a second core's worth of speed-up
  without the cost of shipping arrays between processes (measured in bench/data_throughput.py).
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import numpy as np
from PIL import Image, UnidentifiedImageError

from tinymoe.data.errors import ImageDecodeError
from tinymoe.data.progress import progress_bar

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")


def default_workers() -> int:
    """Decode threads to use: two, or one on a single-core machine (more threads than cores only add switching)."""
    return max(1, min(2, os.cpu_count() or 1))


def _to_rgb(im: Image.Image) -> Image.Image:
    # Grayscale ("L"), palette ("P"), CMYK, 16-bit ("I;16") and RGBA all become 3-channel RGB; alpha is
    # dropped (composited onto nothing), which is what torchvision's `convert("RGB")` habit does too.
    return im if im.mode == "RGB" else im.convert("RGB")


def _resize_center_crop(im: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to `size` (antialiased bilinear), then cut the central size x size square."""
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def decode_image(
    data: bytes, name: str, source: str = "", *, expect_size: tuple[int, int] | None = None, resize: int | None = None
) -> np.ndarray:
    """Decode one encoded image to uint8 RGB (H, W, 3).

    Args:
        data: the file's bytes.
        name: its file name or zip member name (used only in error messages).
        source: where it lives, e.g. the zip's path (used only in error messages).
        expect_size: (height, width) it must have; a different size is an error naming the file.
        resize: if given, scale the shorter side to `resize` and center-crop a square of that size.
    """
    where = f"{name} in {source}" if source else name
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decode now, inside the try, so truncation is caught here
            im = _to_rgb(im)
            if resize is not None:
                im = _resize_center_crop(im, resize)
            array = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        hint = (
            "the file is truncated or corrupt (an interrupted download or copy?). Re-download or re-copy it, "
            "or delete this one image"
        )
        raise ImageDecodeError(f"cannot decode image {where}: {exc}. Likely cause: {hint}.", name, source) from None
    if expect_size is not None and array.shape[:2] != tuple(expect_size):
        raise ImageDecodeError(
            f"image {where} is {array.shape[0]}x{array.shape[1]} (height x width), expected "
            f"{expect_size[0]}x{expect_size[1]}; this does not look like an unmodified copy of the dataset",
            name,
            source,
        )
    return array


def decode_many(
    names: Sequence[str],
    read: Callable[[str], bytes],
    out: np.ndarray,
    *,
    source: str = "",
    resize: int | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    desc: str = "decoding",
    chunk_size: int = 256,
) -> None:
    """Decode `names[i]` (bytes from `read(name)`) into `out[i]` for every i, with a progress bar.

    `out` is preallocated uint8 (N, H, W, 3), typically the cache's memory map, so the decoded split
    never needs to fit in RAM twice. Work is split into chunks of `chunk_size` images handed to a pool
    of `workers` threads (default `default_workers()`); `read` must be safe to call from several
    threads. The first failing image stops the whole decode and its `ImageDecodeError` is raised.
    `progress=None` shows the bar only when stderr is a terminal.
    """
    n = len(names)
    if out.shape[0] != n:
        raise ValueError(f"decode_many: out has {out.shape[0]} rows for {n} names")
    expect = out.shape[1:3] if resize is None else None
    stop = threading.Event()  # set when one chunk failed, so the others stop early

    def decode_chunk(start: int) -> int:
        stop_at = min(start + chunk_size, n)
        for i in range(start, stop_at):
            if stop.is_set():
                break
            out[i] = decode_image(read(names[i]), names[i], source, expect_size=expect, resize=resize)
        return stop_at - start

    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"decode_many: workers must be >= 1, got {workers}")
    starts = range(0, n, chunk_size)
    with progress_bar(total=n, desc=desc, unit="img", enabled=progress) as bar:
        if workers == 1:
            for start in starts:
                bar.update(decode_chunk(start))
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tinymoe-decode") as pool:
            pending = {pool.submit(decode_chunk, s) for s in starts}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        if future.exception() is not None:
                            raise future.exception()
                        bar.update(future.result())
            except BaseException:  # a bad image, or Ctrl-C: stop the other chunks instead of finishing them
                stop.set()
                for future in pending:
                    future.cancel()
                raise
