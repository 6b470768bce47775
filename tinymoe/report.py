"""A report for your own run: `python -m tinymoe.report RUN [--out DIR]`.

RUN is a run folder written by `python -m tinymoe.train` (its results.json, and each stage's
summary.csv), or a results JSON with per-epoch histories (e.g. bench/results/study/base-seed0.json).
The report is a folder of pictures and a short Markdown summary:

    router_confusion.png   true superclass x chosen expert (counts), with the images per expert on top
                           and per superclass on the right; a perfect router is diagonal
    curves.png             train and val loss, and top-1, per epoch, dense vs MoE: overfitting shows as
                           a train curve that keeps improving while val stalls
    report.md              the numbers: top-1, Δ, router accuracy, load, accuracy per expert, entropy
    expert_images.png      with --images: one row per expert of val images it received, labelled with its
                           load and most common superclasses (routes the val images through RUN's MoE
                           checkpoint; the data is rebuilt from the checkpoint's metadata, or --data)

Charts are drawn with matplotlib (headless Agg backend): `pip install "tinymoe[plots]"`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from tinymoe.routing_analysis import routing_summary


def _matplotlib():
    try:
        import matplotlib
    except ImportError as exc:  # the plots extra is optional
        raise SystemExit('tinymoe.report draws with matplotlib: pip install "tinymoe[plots]" (or matplotlib)') from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_run(run: Path) -> tuple[dict, dict[str, list[dict]]]:
    """(results, histories): results.json's content, and per model ("dense", "moe") its per-epoch rows
    with keys among epoch, train_loss, eval_loss, train_top1, eval_top1."""
    run = Path(run)
    if run.is_dir():
        path = run / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{run} has no results.json: is it a run folder of python -m tinymoe.train?")
        results = json.loads(path.read_text(encoding="utf-8"))
        histories = {}
        for name, folder in (("dense", "dense"), ("moe", None)):
            folders = [run / folder] if folder else sorted(run.glob("moe-*"))
            for f in folders:
                summary = f / "summary.csv"
                if summary.is_file():
                    with summary.open(newline="") as fh:
                        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
                    histories[name] = rows
        return results, histories
    results = json.loads(run.read_text(encoding="utf-8"))
    histories = {name: results[name]["history"] for name in ("dense", "moe")
                 if isinstance(results.get(name), dict) and results[name].get("history")}
    return results, histories


def draw_router_confusion(routing: dict, path: Path, title: str = "") -> None:
    """The (superclass x expert) matrix with per-expert load above and per-superclass totals at the right."""
    import numpy as np

    plt = _matplotlib()
    confusion = np.asarray(routing["confusion"])
    groups, experts = confusion.shape
    fig = plt.figure(figsize=(1.2 + 0.45 * experts, 1.6 + 0.4 * groups))
    grid = fig.add_gridspec(2, 2, width_ratios=(experts, 2), height_ratios=(2, groups), wspace=0.05, hspace=0.05)
    ax = fig.add_subplot(grid[1, 0])
    top = fig.add_subplot(grid[0, 0], sharex=ax)
    right = fig.add_subplot(grid[1, 1], sharey=ax)
    ax.imshow(confusion, cmap="Blues", aspect="auto")
    for g in range(groups):
        for e in range(experts):
            if confusion[g, e]:
                dark = confusion[g, e] > confusion.max() / 2
                ax.text(e, g, str(confusion[g, e]), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    ax.set_xlabel("chosen expert")
    ax.set_ylabel("true superclass")
    ax.set_xticks(range(experts))
    ax.set_yticks(range(groups))
    load = confusion.sum(axis=0)
    top.bar(range(experts), load, color="tab:blue")
    top.set_ylabel("images")
    top.tick_params(labelbottom=False)
    top.set_title(title or f"router accuracy {routing['router_accuracy']:.1f}% (diagonal)", fontsize=9)
    right.barh(range(groups), confusion.sum(axis=1), color="tab:gray")
    right.tick_params(labelleft=False)
    right.set_xlabel("images")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def draw_curves(histories: dict[str, list[dict]], path: Path) -> None:
    """Loss and top-1 per epoch; train solid, val dashed; dense and MoE in two colours."""
    plt = _matplotlib()
    fig, (loss_ax, top1_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
    colours = {"dense": "tab:gray", "moe": "tab:blue"}
    for name, rows in histories.items():
        epochs = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
        for key, ax, style, split in (("train_loss", loss_ax, "-", "train"), ("eval_loss", loss_ax, "--", "val"),
                                      ("train_top1", top1_ax, "-", "train"), ("eval_top1", top1_ax, "--", "val")):
            values = [r.get(key) for r in rows]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, color=colours.get(name), label=f"{name} {split}")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    top1_ax.set(xlabel="epoch", ylabel="top-1 (%)", title="top-1")
    for ax in (loss_ax, top1_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(name: str) -> str:
    return name.split(",")[0].strip() or name


def moe_checkpoint(run: Path) -> Path:
    """The MoE checkpoint of a run folder (RUN/moe-*/model.npz), or `run` itself if it is a checkpoint."""
    run = Path(run)
    if run.is_file():
        return run
    found = sorted(run.glob("moe-*/model.npz"))
    if not found:
        raise FileNotFoundError(f"{run} has no moe-*/model.npz: is it a run folder of python -m tinymoe.train?")
    return found[0]


def draw_expert_images(checkpoint, path: Path, data: str | None = None, per_expert: int = 8, zoom: int = 2,
                       seed: int = 0, splits=None) -> dict:
    """Route the val images through a per-image MoE checkpoint and draw one row per expert: `per_expert`
    val images it received (a seeded sample), labelled with the expert's index, its load (images and
    share) and its most common true superclasses, each named by its first classes. The data is rebuilt
    from the checkpoint's metadata (`load_splits(**metadata["data"])`) unless `data` (a --data value) or
    `splits` is given. Returns {"load": [...], "rows": [[val indices], ...]}."""
    import numpy as np
    from PIL import Image, ImageDraw

    from tinymoe.checkpoint import load_checkpoint, load_model
    from tinymoe.pipeline import load_splits
    from tinymoe.routing_analysis import analyse_model

    model = load_model(checkpoint)
    if splits is None:
        splits = load_splits(data) if data else load_splits(**load_checkpoint(checkpoint).metadata["data"])
    routing = analyse_model(model, splits.val_images, splits.val_labels)
    groups = np.asarray(model.class_to_group, np.int64)
    names = [", ".join(_short(splits.classes[c]) for c in np.flatnonzero(groups == g)[:2]) for g in range(groups.max() + 1)]
    rng = np.random.default_rng(seed)
    images = splits.val_images
    side = images.shape[1] * zoom
    label_h, left = 30, 4
    width = max(per_expert * (side + 2) + left, 420)
    canvas = Image.new("RGB", (width, routing.num_experts * (side + label_h) + 4), "white")
    pen = ImageDraw.Draw(canvas)
    total = max(routing.experts.size, 1)
    rows = []
    for e in range(routing.num_experts):
        received = np.flatnonzero(routing.experts == e)
        chosen = np.sort(rng.choice(received, size=min(per_expert, received.size), replace=False))
        rows.append(chosen.tolist())
        top = e * (side + label_h) + 2
        counts = np.bincount(routing.superclasses[received], minlength=len(names))
        common = [g for g in np.argsort(-counts, kind="stable")[:2] if counts[g]]
        supers = "; ".join(f"super {g} ({names[g]}) {100 * counts[g] / received.size:.0f}%" for g in common)
        pen.text((left, top), f"expert {e}: {received.size} images ({100 * received.size / total:.0f}%)", fill="black")
        pen.text((left, top + 13), supers or "no images", fill=(90, 90, 90))
        for n, index in enumerate(chosen):
            tile = Image.fromarray(images[index]).resize((side, side), Image.NEAREST)
            canvas.paste(tile, (left + n * (side + 2), top + label_h - 2))
    canvas.save(path)
    return {"load": routing.load.tolist(), "rows": rows}


def summary_markdown(results: dict, pictures: list[str]) -> str:
    dense, moe = results.get("dense"), results.get("moe")
    lines = ["# Run report", "", "| model | top-1 | top-5 | FLOPs | params (active) |", "| --- | --- | --- | --- | --- |"]
    for name, r in (("dense", dense), ("MoE", moe)):
        if isinstance(r, dict):
            lines.append(f"| {name} | {r['top1']:.2f}% | {r['top5']:.2f}% | {r['flops'] / 1e6:.1f}M | "
                         f"{r['params']:,} ({r['active_params']:,}) |")
    if isinstance(dense, dict) and isinstance(moe, dict):
        lines += ["", f"MoE − dense: {moe['top1'] - dense['top1']:+.2f} points on {moe['images']:,} val images."]
    if isinstance(moe, dict):
        lines += routing_summary(moe, digits=1)
        routing = moe.get("routing")
        if routing:
            load = routing["load"]
            accuracy = ", ".join("–" if a is None else f"{a:.0f}" for a in routing["accuracy_per_expert"])
            lines += [f"Images per expert: {load} ({min(load)} to {max(load)}).",
                      f"Top-1 (%) per expert: {accuracy}.",
                      f"Router entropy: {routing['entropy_mean']:.2f} nats on average (uniform = ln E = "
                      f"{routing['entropy_max']:.2f})."]
        elif moe.get("expert_counts"):
            lines.append(f"Images per expert: {moe['expert_counts']}.")
    lines += [""] + [f"![{p}]({p})" for p in pictures]
    return "\n".join(lines) + "\n"


def make_report(run, out=None, images: bool = False, data: str | None = None, per_expert: int = 8) -> list[Path]:
    """Draw the report of `run` into `out` (default RUN/report, or report-NAME beside a JSON); return its files.
    With `images` (a run folder only), also the grid of val images each expert receives."""
    run = Path(run)
    results, histories = load_run(run)
    out = Path(out) if out else (run / "report" if run.is_dir() else run.parent / f"report-{run.stem}")
    out.mkdir(parents=True, exist_ok=True)
    pictures = []
    if images:
        draw_expert_images(moe_checkpoint(run), out / "expert_images.png", data=data, per_expert=per_expert)
        pictures.append("expert_images.png")
    routing = (results.get("moe") or {}).get("routing")
    if routing:
        draw_router_confusion(routing, out / "router_confusion.png")
        pictures.append("router_confusion.png")
    if histories:
        draw_curves(histories, out / "curves.png")
        pictures.append("curves.png")
    (out / "report.md").write_text(summary_markdown(results, pictures), encoding="utf-8")
    return [out / p for p in pictures] + [out / "report.md"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tinymoe.report", description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a run folder of python -m tinymoe.train, or a results JSON with histories")
    p.add_argument("--out", type=Path, default=None, help="where to write the report (default: RUN/report)")
    p.add_argument("--images", action="store_true",
                   help="also draw the val images each expert receives (routes them through RUN's MoE checkpoint)")
    p.add_argument("--data", default=None, help="with --images: the dataset (default: the checkpoint's own)")
    p.add_argument("--per-expert", type=int, default=8, help="with --images: images per expert (default 8)")
    args = p.parse_args(argv)
    try:
        files = make_report(args.run, args.out, images=args.images, data=args.data, per_expert=args.per_expert)
    except (FileNotFoundError, json.JSONDecodeError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
