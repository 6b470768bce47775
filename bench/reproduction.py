"""Record a `python -m tinymoe.train` run as a reproduction result, and plot top-1 against FLOPs.

    python bench/reproduction.py record RUN_DIR --name calib-6x64-p16 --command "python -m tinymoe.train ..."
    python bench/reproduction.py record RUN_DIR --name ablation-learned --into ablation --command "..."
    python bench/reproduction.py plot                       # bench/results/reproduction/top1_vs_flops.png
    python bench/reproduction.py table ablation reproduction   # a Markdown table of the recorded runs

`record` reads RUN_DIR/results.json (written by the pipeline at the end of a run) and each stage's
summary.csv, adds the machine description, the exact command, wall times and the calibration target,
and writes bench/results/reproduction/<name>.json. Only numbers a run actually produced are written.

`plot` draws every recorded run of bench/results/reproduction/ like the paper's Figure 1: top-1 on val
against inference FLOPs, dense and MoE (superclass routing, the paper's) as two lines, one point per
model size (the mean over seeds where several runs share a size), with Pillow (matplotlib is not a dependency). Runs that vary something else at one size,
such as the routing ablation, are recorded `--into ablation` (bench/results/ablation/) so they do not
crowd the size axis; `table` lists any of these folders as Markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

BENCH_RESULTS = Path(__file__).resolve().parent / "results"
RESULTS = BENCH_RESULTS / "reproduction"


def _stage_history(run: Path, stage: str) -> list[dict]:
    path = run / stage / "summary.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


def _epoch_seconds(run: Path, stage: str) -> list[float]:
    """Seconds per epoch, from the stage's final checkpoint history (summary.csv has no timing column)."""
    from tinymoe.checkpoint import load_checkpoint

    path = run / stage / "model.npz"
    if not path.exists():
        return []
    history = load_checkpoint(path).metadata.get("history", [])
    return [float(row["seconds"]) for row in history if "seconds" in row]


def record(run: Path, name: str, command: str, notes: str = "", into: str = "reproduction") -> Path:
    results = json.loads((run / "results.json").read_text())
    entry = {
        "name": name,
        "command": command,
        "notes": notes,
        "machine": describe(),
        "dataset": results["dataset"],
        "train_config": results["train_config"],
        "train_images": results["train_images"],
        "holdout_images": results["holdout_images"],
    }
    for model, stage in (("dense", "dense"), ("moe", None)):
        if model not in results:
            continue
        r = dict(results[model])
        stage = stage or f"moe-{r['config']['routing']}"
        r["history"] = _stage_history(run, stage)
        seconds = _epoch_seconds(run, stage)
        r["train_seconds"] = sum(seconds) if seconds else None
        entry[model] = r
    if "delta_top1" in results:
        entry["delta_top1"] = results["delta_top1"]
    superclasses = run / "superclasses.json"
    if superclasses.exists():
        entry["superclasses"] = json.loads(superclasses.read_text())
    folder = BENCH_RESULTS / into
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.json"
    out.write_text(json.dumps(entry, indent=2) + "\n")
    return out


def plot(out: Path | None = None) -> Path:
    """Top-1 vs MFLOPs, one line for dense and one for MoE over the recorded runs (grouped by config)."""
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    series = {"dense": [], "moe": []}
    for run in runs:
        for model in series:
            if model in run and (model == "dense" or run[model]["config"]["routing"] == "superclass"):
                series[model].append((run[model]["flops"] / 1e6, run[model]["top1"], run["name"]))
    points = [p for s in series.values() for p in s]
    if not points:
        raise SystemExit("no recorded runs in bench/results/reproduction/: run `record` first")
    width, height, margin = 640, 420, 60
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x_lo, x_hi = min(xs) * 0.8, max(xs) * 1.2
    y_lo, y_hi = max(0.0, min(ys) - 5), max(ys) + 5

    def at(x, y):
        px = margin + (x - x_lo) / max(x_hi - x_lo, 1e-9) * (width - 2 * margin)
        py = height - margin - (y - y_lo) / max(y_hi - y_lo, 1e-9) * (height - 2 * margin)
        return px, py

    draw.rectangle([margin, margin, width - margin, height - margin], outline="black")
    for i in range(5):  # axis ticks
        y = y_lo + i * (y_hi - y_lo) / 4
        draw.text((8, at(x_lo, y)[1] - 6), f"{y:.1f}", fill="black")
        x = x_lo + i * (x_hi - x_lo) / 4
        draw.text((at(x, y_lo)[0] - 12, height - margin + 8), f"{x:.1f}", fill="black")
    draw.text((width // 2 - 60, height - 22), "inference MFLOPs per image", fill="black")
    draw.text((margin, 20), "top-1 on val (%)", fill="black")
    colours = {"dense": (31, 119, 180), "moe": (214, 39, 40)}
    for i, (model, pts) in enumerate(series.items()):
        # Runs of one size (same FLOPs) with other seeds: one point, their mean, labelled with the count.
        by_flops: dict[float, list[float]] = {}
        for x, y, _ in pts:
            by_flops.setdefault(x, []).append(y)
        pts = [(x, sum(ys) / len(ys), len(ys)) for x, ys in sorted(by_flops.items())]
        xy = [at(x, y) for x, y, _ in pts]
        if len(xy) > 1:
            draw.line(xy, fill=colours[model], width=2)
        for (px, py), (_, top1, n) in zip(xy, pts):
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colours[model])
            # Dense and MoE of one size share their FLOPs: dense labels go above, MoE labels below.
            label = f"{top1:.1f}" + (f" (mean of {n})" if n > 1 else "")
            draw.text((px + 6, py - 14 if model == "dense" else py + 2), label, fill=colours[model])
        legend_y = margin + 12 + 16 * i
        draw.line([(width - margin - 140, legend_y), (width - margin - 120, legend_y)], fill=colours[model], width=2)
        draw.text((width - margin - 114, legend_y - 6), "Mobile V-MoE" if model == "moe" else "dense ViT",
                  fill=colours[model])
    out = out or RESULTS / "top1_vs_flops.png"
    img.save(out)
    return out


def table(folders: list[str]) -> str:
    """One Markdown row per model of every run recorded in the given folders of bench/results/."""
    rows = ["| run | model | routing | MFLOPs | params (total / active) | top-1 | top-5 | router acc | "
            "val images per expert (min–max) | train loss (last epoch) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for folder in folders:
        for path in sorted((BENCH_RESULTS / folder).glob("*.json")):
            run = json.loads(path.read_text())
            for model in ("dense", "moe"):
                r = run.get(model)
                if r is None:
                    continue
                c = r["config"]
                counts = r.get("expert_counts")
                router = "–" if r.get("router_accuracy") is None else f"{r['router_accuracy']:.1f}%"
                loss = r["history"][-1].get("train_loss") if r.get("history") else None
                rows.append(
                    f"| {run['name']} | {model} {c['layers']}×{c['dim']} | {c['routing'] if model == 'moe' else '–'} | "
                    f"{r['flops'] / 1e6:.1f} | {r['params'] / 1e6:.2f}M / {r['active_params'] / 1e6:.2f}M | "
                    f"{r['top1']:.2f}% | {r['top5']:.2f}% | {router} | "
                    f"{'–' if not counts else f'{min(counts)}–{max(counts)}'} | {'–' if loss is None else f'{loss:.3f}'} |"
                )
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("run", type=Path)
    r.add_argument("--name", required=True)
    r.add_argument("--command", required=True, help="the exact command that produced the run")
    r.add_argument("--notes", default="")
    r.add_argument("--into", default="reproduction", help="folder under bench/results/ (e.g. ablation)")
    sub.add_parser("plot")
    t = sub.add_parser("table")
    t.add_argument("folders", nargs="+", help="folders under bench/results/, e.g. reproduction ablation")
    args = parser.parse_args(argv)
    if args.cmd == "record":
        print(record(args.run, args.name, args.command, args.notes, args.into))
    elif args.cmd == "table":
        print(table(args.folders))
    else:
        print(plot())
    return 0


if __name__ == "__main__":
    sys.exit(main())
