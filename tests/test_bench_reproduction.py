"""bench/reproduction.py records what a run produced (and nothing else) and plots it."""

import json
import sys
from pathlib import Path

from PIL import Image

from tinymoe.models import ModelConfig
from tinymoe.pipeline import PipelineOptions, load_splits, run_pipeline
from tinymoe.training import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import reproduction  # noqa: E402


def test_record_and_plot_a_synthetic_run(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduction, "BENCH_RESULTS", tmp_path / "results")
    monkeypatch.setattr(reproduction, "RESULTS", tmp_path / "results" / "reproduction")
    splits = load_splits("synthetic", experts=3, synthetic_per_class=40, seed=0)
    config = ModelConfig(layers=2, dim=16, heads=2, patch_size=8, moe_layers=1, experts=3)
    run = tmp_path / "run"
    results = run_pipeline(splits, PipelineOptions(out=run, model=config, train=TrainConfig(epochs=2, batch_size=32,
                                                                                            prefetch=0)),
                           log=lambda *_: None)
    path = reproduction.record(run, "tiny", "python -m tinymoe.train --data synthetic ...", notes="test")
    entry = json.loads(path.read_text())
    assert entry["dense"]["top1"] == results["dense"]["top1"] and entry["moe"]["top1"] == results["moe"]["top1"]
    assert entry["delta_top1"] == results["delta_top1"]
    assert len(entry["dense"]["history"]) == 2 and entry["dense"]["train_seconds"] > 0
    assert entry["machine"]["cores"] >= 1 and entry["command"].startswith("python -m tinymoe.train")
    assert len(entry["superclasses"]["classes"]) == splits.num_classes
    png = reproduction.plot()
    assert Image.open(png).size == (640, 420)

    # The same run recorded as an ablation goes to its own folder, and `table` lists both.
    other = reproduction.record(run, "tiny-ablation", "python -m tinymoe.train ...", into="ablation")
    assert other.parent == tmp_path / "results" / "ablation"
    rows = reproduction.table(["reproduction", "ablation"]).splitlines()
    assert len(rows) == 2 + 4  # header, rule, dense + MoE of each recorded run
    assert f"{results['moe']['top1']:.2f}%" in rows[3] and "superclass" in rows[3]
