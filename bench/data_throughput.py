"""How fast the data pipeline is: JPEG decoding, the cache, batches and augmentation, synthetic data.

    python bench/data_throughput.py --data ../shared/data/tiny-imagenet-200.zip            # quick (~1 min)
    python bench/data_throughput.py --data ../shared/data/tiny-imagenet-200.zip --full     # + full decode (train+val)

Measures, on this machine:
* indexing: opening the zip and listing a split's members and labels (no decoding);
* decoding: images/s for a sample of train JPEGs with 1, 2 and 3 decode threads;
* with --full: decoding train and val into a fresh cache directory (deleted afterwards unless
  --cache-dir is given), then loading them back from the cache (memory maps) and reading every byte;
* batches: images/s served by BatchLoader (batch 128) without augmentation, with crop+flip, and
  the wall time of crop+flip batches + a fixed single-threaded NumPy "step" per batch, with and without
  prefetch, next to the step's time alone (how much loading hides behind compute);
* synthetic: images/s of make_synthetic at 32x32.

Results go to bench/results/data_throughput.json with the machine description and the command.
The machine's load average is recorded too: on a shared machine, timings scale with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402  (bench/machine.py: cpu model, cores, numpy version, load)

from tinymoe.data import BatchLoader, TinyImageNet, index_tiny_imagenet, make_synthetic  # noqa: E402
from tinymoe.data.images import decode_many  # noqa: E402
from tinymoe.data.tinyimagenet import _open_source  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "data_throughput.json"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_index(data: str) -> dict:
    out = {}
    for split in ("train", "val"):
        index, seconds = timed(lambda: index_tiny_imagenet(data, split))
        out[split] = {"images": len(index), "seconds": round(seconds, 3)}
    return out


def bench_decode(data: str, sample: int, threads: list[int]) -> dict:
    index = index_tiny_imagenet(data, "train")
    source = _open_source(Path(index.source.path))
    # An evenly spaced sample across all classes (decode cost varies a little with content).
    rows = np.linspace(0, len(index) - 1, sample).astype(int)
    names = [index.names[i] for i in rows]
    out = {"sample_images": sample}
    for workers in threads:
        images = np.empty((sample, 64, 64, 3), np.uint8)
        _, seconds = timed(lambda: decode_many(names, source.read, images, workers=workers, progress=False))
        out[f"threads_{workers}"] = {"seconds": round(seconds, 3), "images_per_s": round(sample / seconds)}
    return out


def bench_full(data: str, cache_dir: Path) -> dict:
    out = {}
    for split in ("train", "val"):
        ds, first = timed(lambda: TinyImageNet(data, split, cache_dir=cache_dir, progress=False))
        assert not ds.loaded_from_cache, f"{cache_dir} already holds {split}; pass an empty --cache-dir"
        again, reload_seconds = timed(lambda: TinyImageNet(data, split, cache_dir=cache_dir))
        assert again.loaded_from_cache
        _, read_seconds = timed(lambda: int(np.asarray(again.images).sum(dtype=np.uint64)))
        out[split] = {
            "images": len(ds),
            "decode_seconds": round(ds.decode_seconds, 2),
            "decode_images_per_s": round(len(ds) / ds.decode_seconds),
            "first_load_seconds": round(first, 2),
            "cached_load_seconds": round(reload_seconds, 4),
            "read_all_cached_bytes_seconds": round(read_seconds, 3),
            "cache_bytes": int(ds.images.nbytes),
        }
    out["cache_dir"] = str(cache_dir)
    return out


def bench_batches(images: np.ndarray, labels: np.ndarray, batches: int, batch_size: int = 128) -> dict:
    n = min(len(images), batches * batch_size)
    images, labels = images[:n], labels[:n]
    out = {"batch_size": batch_size, "images": n}
    for name, kwargs in (("plain", {}), ("crop_flip", {"augment": True})):
        loader = BatchLoader(images, labels, batch_size, seed=0, **kwargs)
        _, seconds = timed(lambda: [None for _ in loader.epoch(0)])
        out[name] = {"images_per_s": round(n / seconds)}

    # Overlap: a consumer doing fixed NumPy work per batch (a stand-in for a training step). With
    # prefetch the loader prepares the next batch while the consumer computes. The stand-in is
    # single-threaded elementwise work (no BLAS threads), so on 2 cores the loader has a core to use.
    def step(x):
        for _ in range(4):
            y = np.tanh(x)
        return float(y[0, 0, 0, 0])

    steps = -(-n // batch_size)
    zeros = np.zeros((batch_size,) + images.shape[1:], np.float32)
    _, compute_only = timed(lambda: [step(zeros) for _ in range(steps)])
    for prefetch in (0, 2):
        loader = BatchLoader(images, labels, batch_size, seed=0, augment=True, prefetch=prefetch)
        _, seconds = timed(lambda: [step(x) for x, _ in loader.epoch(1)])
        out[f"crop_flip_with_compute_prefetch_{prefetch}"] = {"seconds": round(seconds, 3)}
    out["compute_only_seconds"] = round(compute_only, 3)
    return out


def bench_synthetic() -> dict:
    make_synthetic(4, 3, 10, 32)  # warm up
    data, seconds = timed(lambda: make_synthetic(10, 4, 250, 32, seed=0))
    return {"images": len(data), "size": 32, "seconds": round(seconds, 3), "images_per_s": round(len(data) / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="Tiny ImageNet zip or folder (without it: synthetic data only)")
    parser.add_argument("--full", action="store_true", help="also decode the whole train and val splits")
    parser.add_argument("--cache-dir", default=None, help="where --full caches (default: a temporary directory)")
    parser.add_argument("--sample", type=int, default=10_000, help="images decoded per thread count")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--batches", type=int, default=100, help="batches of 128 timed per loader setting")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    result = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": {**describe(), "pillow": PIL.__version__},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if args.data:
        result["index"] = bench_index(args.data)
        print("index", result["index"], flush=True)
        result["decode"] = bench_decode(args.data, args.sample, args.threads)
        print("decode", result["decode"], flush=True)
        if args.full:
            own_tmp = args.cache_dir is None
            cache_dir = Path(tempfile.mkdtemp(prefix="tinymoe-bench-")) if own_tmp else Path(args.cache_dir)
            try:
                result["full"] = bench_full(args.data, cache_dir)
                print("full", result["full"], flush=True)
                train = TinyImageNet(args.data, "train", cache_dir=cache_dir)
                result["batches"] = bench_batches(train.images, train.labels, args.batches)
                del train
            finally:
                if own_tmp:
                    shutil.rmtree(cache_dir, ignore_errors=True)
        else:
            sub = TinyImageNet(args.data, "train", classes=200, limit=64, cache=False, progress=False)
            result["batches"] = bench_batches(sub.images, sub.labels, args.batches)
        result["batches"]["images_from"] = "Tiny ImageNet train (64x64)"
    else:
        syn = make_synthetic(10, 10, 128, 64, seed=0)
        result["batches"] = bench_batches(syn.images, syn.labels, args.batches)
        result["batches"]["images_from"] = "synthetic (64x64)"
    print("batches", result["batches"], flush=True)
    result["synthetic"] = bench_synthetic()
    print("synthetic", result["synthetic"], flush=True)
    result["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
