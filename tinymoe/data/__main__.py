"""`python -m tinymoe.data`: prepare the cache, check or download Tiny ImageNet.

    python -m tinymoe.data prepare PATH [--cache-dir DIR]   decode train and val once (progress bar), print timings
    python -m tinymoe.data verify PATH [--md5]              layout + zip CRC check, optional MD5 vs the public file
    python -m tinymoe.data download FOLDER                  fetch the public zip (resumable, checksummed)
    python -m tinymoe.data where                            print the cache directory in use
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from tinymoe.data.cache import default_cache_dir
from tinymoe.data.errors import DatasetFormatError, DatasetNotFoundError, DownloadError
from tinymoe.data.tinyimagenet import TinyImageNet, download_tiny_imagenet, verify_tiny_imagenet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinymoe.data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="decode Tiny ImageNet train and val into the cache")
    prepare.add_argument("data", help="the zip, the unpacked folder, or a folder containing either")
    prepare.add_argument("--cache-dir", default=None, help=f"cache directory (default {default_cache_dir()})")
    prepare.add_argument("--workers", type=int, default=None, help="decode threads (default 2)")
    verify = commands.add_parser("verify", help="check a copy of Tiny ImageNet without decoding it")
    verify.add_argument("data")
    verify.add_argument("--md5", action="store_true", help="also compare the zip's MD5 with the public file's")
    download = commands.add_parser("download", help="download the public Tiny ImageNet zip")
    download.add_argument("folder")
    commands.add_parser("where", help="print the cache directory")
    args = parser.parse_args(argv)

    try:
        if args.command == "prepare":
            for split in ("train", "val"):
                start = time.perf_counter()
                ds = TinyImageNet(args.data, split, cache_dir=args.cache_dir, workers=args.workers, progress=True)
                how = "from cache" if ds.loaded_from_cache else f"decoded in {ds.decode_seconds:.1f} s"
                print(f"{split}: {len(ds)} images, {ds.num_classes} classes, {how}, "
                      f"{time.perf_counter() - start:.1f} s total -> {ds.cache_path}")
        elif args.command == "verify":
            print(json.dumps(verify_tiny_imagenet(args.data, md5=args.md5), indent=1))
        elif args.command == "download":
            print(download_tiny_imagenet(args.folder, progress=True))
        elif args.command == "where":
            print(default_cache_dir())
    except (DatasetNotFoundError, DatasetFormatError, DownloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
