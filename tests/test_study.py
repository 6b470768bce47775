"""bench/study.py: the grid plan, a real 2-run grid on synthetic data (shared dense stage, one JSON per
run with its command, skipping finished runs), a failing run, the table and the plots."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import study  # noqa: E402

PLOTS = 'pip install -e ".[plots]"'  # the charts need matplotlib (the optional `plots` extra)


def needs_matplotlib():
    pytest.importorskip("matplotlib", reason=PLOTS)


def test_plan_one_at_a_time_and_full_designs():
    grid = {"base": {"epochs": 1, "k": 1}, "seeds": [0, 3],
            "factors": {"k": {"1": {}, "2": {"k": 2}},
                        "reg": {"none": {}, "a": {"mixup": 0.8}, "b": {"upcycle": True}}},
            "combinations": [{"k": "2", "reg": "a"}]}
    runs = study.plan(grid)
    names = [r.name for r in runs]
    assert names[:5] == ["base-seed0", "k=2-seed0", "reg=a-seed0", "reg=b-seed0", "k=2,reg=a-seed0"]
    assert len(runs) == 10 and names[5] == "base-seed3"
    combo = runs[4]
    assert combo.flags == {"epochs": 1, "k": 2, "mixup": 0.8} and combo.changed == {"k": "2", "reg": "a"}
    cmd = study.command(runs[3], "synthetic", Path("r"), threads=1)
    assert cmd[1:3] == ["-m", "tinymoe.train"] and "--upcycle" in cmd and cmd[cmd.index("--seed") + 1] == "0"
    assert cmd[cmd.index("--out") + 1] == str(Path("r") / "reg=b-seed0")
    full = study.plan(grid | {"design": "full", "seeds": [0]})
    assert len(full) == 6 and full[0].name == "base-seed0"
    # Dense models are shared across MoE-only factors only.
    by_name = {r.name: r for r in runs}
    same = study.dense_signature(by_name["base-seed0"], "tiny-imagenet")
    assert study.dense_signature(by_name["k=2-seed0"], "tiny-imagenet") == same
    assert study.dense_signature(by_name["reg=b-seed0"], "tiny-imagenet") == same  # upcycling: MoE only
    assert study.dense_signature(by_name["reg=a-seed0"], "tiny-imagenet") != same  # mixup trains the dense too
    assert study.dense_signature(by_name["base-seed3"], "tiny-imagenet") != same
    with pytest.raises(SystemExit, match="unknown factor or level"):
        study.plan(grid | {"combinations": [{"k": "3"}]})


def test_a_two_run_grid_on_synthetic_data(tmp_path, monkeypatch, capsys):
    results, runs = tmp_path / "results", tmp_path / "runs"
    args = ["--grid", "smoke", "--results", str(results)]
    assert study.main(args + ["run", "--runs-dir", str(runs), "--threads", "1"]) == 0
    files = sorted(results.glob("*.json"))
    assert [f.name for f in files] == ["base-seed0.json", "router-input=mean_tokens-seed0.json"]
    base, other = (json.loads(f.read_text()) for f in files)
    assert base["command"].split()[1:3] == ["-m", "tinymoe.train"] and "--router-input mean_tokens" in other["command"]
    assert other["dense_shared_from"] == "base-seed0" and base["dense_shared_from"] is None
    assert other["dense"]["top1"] == base["dense"]["top1"]  # the same dense model, evaluated again
    assert other["moe"]["config"]["router_input"] == "mean_tokens"
    for entry in (base, other):
        assert entry["delta_top1"] == pytest.approx(entry["moe"]["top1"] - entry["dense"]["top1"])
        assert len(entry["moe"]["history"]) == 1 and "train_loss" in entry["moe"]["history"][0]
        assert sum(entry["moe"]["expert_counts"]) == entry["moe"]["images"]
        # Recorded with the run: both models' top-1 on the un-augmented images they trained on (all of them
        # here: fewer than the 10,000 of the sample).
        assert entry["train_fraction"] == 1.0
        for model in ("dense", "moe"):
            clean = entry[model]["train_clean"]
            assert clean["images"] == clean["of"] == entry["train_images"]
            assert 0 <= entry[model]["train_top1_clean"] <= 100
            assert entry[model]["train_val_gap_clean"] == pytest.approx(
                entry[model]["train_top1_clean"] - entry[model]["top1"])
    # `train-clean` recomputes the same numbers (--force), or a seeded sample of them (--max-images).
    before = json.loads(files[0].read_text())
    assert study.main(args + ["train-clean", "--runs-dir", str(runs)]) == 0
    assert "0 runs updated" in capsys.readouterr().out
    assert study.main(args + ["train-clean", "--runs-dir", str(runs), "--force"]) == 0
    assert json.loads(files[0].read_text()) == before
    assert study.main(args + ["train-clean", "--runs-dir", str(runs), "--force", "--max-images", "40"]) == 0
    sampled = json.loads(files[0].read_text())["moe"]["train_clean"]
    assert sampled["images"] == 40 and sampled["of"] == before["train_images"] and sampled["sample_seed"] == 0
    files[0].write_text(json.dumps(before, indent=2) + "\n")

    def no_training(*a, **k):
        raise AssertionError("a finished run was started again")

    monkeypatch.setattr(subprocess, "run", no_training)
    capsys.readouterr()
    assert study.main(args + ["run", "--runs-dir", str(runs), "--threads", "1"]) == 0
    assert "0 done, 2 finished earlier" in capsys.readouterr().out
    monkeypatch.undo()

    assert study.main(args + ["table"]) == 0
    text = (results / "table.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| base-seed0") or line.startswith("| router-input")]
    assert len(rows) == 2 and f"{base['delta_top1']:+.2f}" in rows[0] and "(dense shared)" in rows[1]
    assert "optimistic" in text
    # `paired`: Δ's standard error from the choice of val images, from the two checkpoints of each run.
    capsys.readouterr()
    assert study.main(args + ["paired", "--runs-dir", str(runs)]) == 0 and "2 runs updated" in capsys.readouterr().out
    for f in files:
        entry = json.loads(f.read_text())
        paired = entry["paired"]
        assert paired["delta"] == pytest.approx(entry["delta_top1"], abs=1e-9)
        assert paired["b_only_right"] - paired["a_only_right"] == round(paired["delta"] * paired["images"] / 100)
        assert paired["standard_error"] > 0 or paired["b_only_right"] + paired["a_only_right"] == 0
        assert entry["dense"]["top1"] <= entry["dense"]["superclass_accuracy"] <= 100  # the right class is in the right group
        # ...and both models' per-image predictions, from which every number re-scores without a checkpoint.
        with np.load(entry["predictions"], allow_pickle=False) as p:
            labels, dense, moe, experts, groups = (p[k] for k in ("labels", "dense", "moe", "moe_experts", "class_to_group"))
        assert labels.shape == dense.shape == moe.shape == (entry["moe"]["images"],) and experts.shape == (labels.size, 1)
        assert 100 * np.mean(dense == labels) == pytest.approx(entry["dense"]["top1"], abs=1e-9)
        assert 100 * np.mean(moe == labels) == pytest.approx(entry["moe"]["top1"], abs=1e-9)
        assert 100 * np.mean(groups[labels] == experts[:, 0]) == pytest.approx(entry["moe"]["router_accuracy"], abs=1e-9)
        assert np.bincount(experts[:, 0], minlength=len(entry["moe"]["expert_counts"])).tolist() == entry["moe"]["expert_counts"]
    assert study.main(args + ["paired", "--runs-dir", str(runs)]) == 0 and "0 runs updated" in capsys.readouterr().out
    assert study.main(args + ["table"]) == 0
    assert f"{base['delta_top1']:+.2f} ± " in (results / "table.md").read_text()
    # A record that its checkpoint does not reproduce is refused, and nothing is written.
    tampered = json.loads(files[0].read_text())
    tampered["moe"]["top1"] += 1.0
    files[0].write_text(json.dumps(tampered))
    with pytest.raises(SystemExit, match="not the recorded model"):
        study.main(args + ["paired", "--runs-dir", str(runs), "--force"])
    assert json.loads(files[0].read_text()) == tampered
    files[0].write_text(json.dumps({**tampered, "moe": {**tampered["moe"], "top1": base["moe"]["top1"]}}))
    needs_matplotlib()
    assert study.main(args + ["plots"]) == 0
    assert Image.open(results / "delta_vs_factors.png").size[0] > 300
    assert Image.open(results / "curves" / "base-seed0.png").size == (560, 360)


def test_a_failing_run_records_nothing_and_is_reported(tmp_path, capsys):
    grid = {"data": "synthetic", "base": study.GRIDS["smoke"]["base"], "seeds": [0],
            "factors": {"k": {"4": {"k": 4}}}}  # k=4 > experts=3: the CLI refuses the config
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(grid))
    code = study.main(["--grid", str(path), "--results", str(tmp_path / "results"), "run", "--runs-dir",
                       str(tmp_path / "runs"), "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 1 and "FAILED (exit code 2)" in out and "k=4" in out
    assert not list((tmp_path / "results").glob("*.json"))


def test_adopting_a_run_made_outside_the_study(tmp_path, capsys):
    """A finished pair trained elsewhere counts as a planned run only if its configuration is that run's."""
    args = ["--grid", "smoke", "--results", str(tmp_path / "elsewhere")]
    assert study.main(args + ["run", "--runs-dir", str(tmp_path / "a"), "--threads", "1", "--only", "base-seed0"]) == 0
    source = tmp_path / "a" / "base-seed0"
    args = ["--grid", "smoke", "--results", str(tmp_path / "results")]
    runs = ["--runs-dir", str(tmp_path / "b")]
    # Another planned run's flags (mean-token router input): refused, naming the field that differs.
    with pytest.raises(SystemExit, match="model.router_input: run has 'class_token'"):
        study.main(args + ["adopt", "router-input=mean_tokens-seed0", "--from", str(source)] + runs)
    assert study.main(args + ["adopt", "base-seed0", "--from", str(source)] + runs) == 0
    with pytest.raises(SystemExit, match="exists already"):
        study.main(args + ["adopt", "base-seed0", "--from", str(source)] + runs)
    assert study.main(args + ["run", "--threads", "2", "--only", "base-seed0"] + runs) == 0  # evaluates, no training
    entry = json.loads((tmp_path / "results" / "base-seed0.json").read_text())
    original = json.loads((source / "results.json").read_text())
    assert entry["adopted_from"].startswith(str(source.resolve())) and "shards=1" in entry["adopted_from"]
    assert entry["dense"]["top1"] == original["dense"]["top1"] and entry["moe"]["top1"] == original["moe"]["top1"]
    assert len(entry["moe"]["history"]) == 1  # the adopted run's own training history
    assert study.main(args + ["table"]) == 0
    assert "base-seed0 (adopted)" in (tmp_path / "results" / "table.md").read_text()
    # `routing` backfills the router analysis of runs recorded before the pipeline measured it, from their
    # checkpoints: here the same numbers the pipeline recorded.
    path = tmp_path / "results" / "base-seed0.json"
    keys = ("top1_routed_right", "top1_routed_wrong", "oracle_top1")
    assert entry["moe"]["oracle_top1"] is not None  # (routed right or wrong may be empty: None)
    for k in keys:
        del entry["moe"][k]
    path.write_text(json.dumps(entry))
    assert study.main(args + ["routing"] + runs) == 0
    again = json.loads(path.read_text())
    assert {k: again["moe"][k] for k in keys} == {k: original["moe"][k] for k in keys}
    assert "checkpoint" in again["moe"]["routing_analysis"]
    assert study.main(args + ["routing"] + runs) == 0 and "0 runs updated" in capsys.readouterr().out
    assert study.main(args + ["routing", "--force"] + runs) == 0 and "1 runs updated" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="only a finished run"):
        study.main(args + ["adopt", "base-seed0", "--from", str(tmp_path / "nothing")] + ["--runs-dir", str(tmp_path / "c")])


def test_upcycled_runs_are_compared_with_dense_trained_on_for_as_long():
    def entry(upcycle, seed, dense, moe):
        return {"name": f"upcycle={upcycle}-seed{seed}", "seed": seed, "levels": {"upcycle": upcycle, "k": "1"},
                "dense": {"top1": dense}, "moe": {"top1": moe}}

    results = [entry("yes", 0, 25.0, 27.5), entry("dense-continued", 0, 25.0, 28.6),
               entry("yes", 1, 25.1, 27.0)]  # seed 1 has no comparator yet: no row
    lines = study.upcycling_table(results)
    rows = [line for line in lines if line.startswith("| upcycle=")]
    assert rows == ["| upcycle=yes-seed0 | 25.00 | 28.60 | 27.50 | -1.10 |"]
    results[0]["paired_vs_dense_continued"] = {"ci95": [-2.08, -0.12]}  # after `paired`: its 95% interval
    assert "| 27.50 | -1.10 ± 0.98 |" in study.upcycling_table(results)[-1]
    assert study.upcycling_table(results[1:2]) == []


def test_the_data_scale_grid_keeps_the_optimizer_and_warm_up_steps(capsys, tmp_path):
    """Issue 15's curve: 4 fractions x 2 seeds, epochs 15/F and warm-up 1/F epochs (whole numbers), an
    evaluation every 1/F epochs, base seed 0's superclasses for every run, and its own results and runs
    folders (its base-seed0 must not meet the main study's)."""
    grid = study.GRIDS["data-scale"]
    runs = study.plan(grid)
    assert [r.name for r in runs] == [f"{stem}-seed{seed}" for seed in (0, 1) for stem in
                                      ("base", "train-fraction=0.5", "train-fraction=0.25", "train-fraction=0.125")]
    base = study.GRIDS["tiny-imagenet"]["base"]
    for run in runs:
        f = float(run.flags["train-fraction"])
        assert run.flags["epochs"] == 15 / f and run.flags["warmup"] == 1 / f and run.flags["eval-every"] == 1 / f
        assert run.flags["superclasses"] == "bench/results/study/superclasses-base-seed0.json"
        assert {k: v for k, v in run.flags.items() if k not in ("epochs", "warmup", "eval-every", "train-fraction",
                                                                "superclasses")} == \
            {k: v for k, v in base.items() if k not in ("epochs", "warmup", "eval-every")}
    # Every run trains its own dense model (the fraction changes the dense model too).
    assert len({study.dense_signature(r, "tiny-imagenet") for r in runs}) == len(runs)
    # The flags are ones python -m tinymoe.train accepts, giving the intended TrainConfig.
    train, _ = study.expected_configs(runs[3], "tiny-imagenet", 200, 64)
    assert (train["epochs"], train["warmup_epochs"], train["eval_every"]) == (120, 8.0, 8)
    # (an empty results folder: the grid's recorded runs in bench/results/data-scale would be "finished earlier")
    assert study.main(["--grid", "data-scale", "--results", str(tmp_path), "run", "--dry-run",
                       "--data", "tiny-imagenet-200.zip"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len([line for line in out if "-m tinymoe.train" in line]) == 8
    assert all(str(Path("runs") / "data-scale") in line for line in out if "-m tinymoe.train" in line)
    assert "--train-fraction 0.125" in out[3] and "--epochs 120" in out[3] and "--warmup 8" in out[3]


def test_the_mechanism_grid_changes_only_the_experts_dropout_and_shares_one_dense_model():
    """Issue 15's mechanism check: the 30-epoch base recipe (the study's epochs=30 run) with expert dropout
    0.3 against a control MoE without it; the two runs have one dense model (expert dropout is MoE-only),
    base seed 0's superclasses, and their own results and runs folders."""
    grid = study.GRIDS["mechanism"]
    runs = study.plan(grid)
    assert [r.name for r in runs] == ["base-seed0", "expert-dropout=0.3-seed0", "base-seed1", "expert-dropout=0.3-seed1"]
    control, dropout = runs[:2]
    thirty = next(r for r in study.plan(study.GRIDS["tiny-imagenet"]) if r.name == "epochs=30-seed0")
    assert {k: v for k, v in control.flags.items() if k != "superclasses"} == thirty.flags
    assert control.flags["superclasses"] == "bench/results/study/superclasses-base-seed0.json"
    assert {k: v for k, v in dropout.flags.items() if control.flags.get(k) != v} == {"expert-dropout": 0.3}
    assert study.dense_signature(control, "tiny-imagenet") == study.dense_signature(dropout, "tiny-imagenet")
    _, model = study.expected_configs(dropout, "tiny-imagenet", 200, 64)
    assert model["expert_dropout"] == 0.3
    assert (grid["results"], grid["runs_dir"]) == ("mechanism", "runs/mechanism")


def _fabricated(name, images, seed, delta, half, router, oracle_gain, gaps):
    """A minimal recorded-run JSON for the plotting code (fabricated numbers: a test fixture only)."""
    dense_top1, moe_top1 = 20.0, 20.0 + delta
    history = [{"epoch": 1, "train_top1": 10.0, "eval_top1": 15.0}, {"epoch": 2, "train_top1": 20.0, "eval_top1": 18.0}]
    return {"name": name, "grid": "data-scale", "changed": {}, "seed": seed, "train_images": images,
            "delta_top1": delta, "train_config": {"epochs": 2},
            "paired": {"delta": delta, "ci95": [delta - half, delta + half]},
            "dense": {"top1": dense_top1, "train_val_gap_clean": gaps[0], "history": history},
            "moe": {"top1": moe_top1, "router_accuracy": router, "oracle_top1": moe_top1 + oracle_gain,
                    "train_val_gap_clean": gaps[1], "history": history}}


def test_the_data_scale_plot_from_minimal_records(tmp_path):
    needs_matplotlib()
    entries = [_fabricated(f"r{i}-seed{seed}", images, seed, 0.5 - i * 0.3 + seed * 0.1, 1.0, 50 - i, 2.5, (3 + i, 5 + i))
               for i, images in enumerate((90000, 45000, 22600, 11200)) for seed in (0, 1)]
    entries[-1]["moe"].pop("train_val_gap_clean")  # not measured yet: drawn without it
    entries[-1].pop("paired")
    for entry in entries:
        (tmp_path / f"{entry['name']}.json").write_text(json.dumps(entry))
    assert study.main(["--grid", "data-scale", "--results", str(tmp_path), "plots"]) == 0
    picture = Image.open(tmp_path / "data_scale.png")
    assert picture.size == (960, 580)
    assert len(picture.convert("RGB").getcolors(maxcolors=10**6)) > 3  # something was drawn
    with pytest.raises(ValueError, match="no recorded run"):
        study.plot_data_scale([], tmp_path / "none.png")


def _sized(name, seed, dim, k, dense_top1, moe_top1, half=None):
    """A minimal recorded run at one model size and k (fabricated numbers: a test fixture only)."""
    entry = {"name": name, "grid": "tiny-imagenet", "seed": seed, "changed": {"size": f"6x{dim}"} if dim != 64 else {},
             "delta_top1": moe_top1 - dense_top1, "train_config": {"epochs": 1},
             "dense": {"top1": dense_top1, "flops": dim * 190_000},
             "moe": {"top1": moe_top1, "flops": dim * 190_000 * (1 + 0.2 * (k - 1)),
                     "config": {"layers": 6, "dim": dim, "k": k}}}
    if k == 2:
        entry["changed"]["k"] = "2"
    if half is not None:
        entry["paired"] = {"delta": moe_top1 - dense_top1, "ci95": [moe_top1 - dense_top1 - half, moe_top1 - dense_top1 + half]}
    return entry


def test_top1_vs_flops_from_minimal_records(tmp_path):
    entries = [_sized("base-seed0", 0, 64, 1, 25.0, 25.2, half=1.0), _sized("base-seed1", 1, 64, 1, 25.1, 25.0),
               _sized("k=2-seed0", 0, 64, 2, 25.0, 25.5, half=0.9), _sized("size=6x96-seed0", 0, 96, 1, 26.7, 26.4),
               _sized("size=6x96,k=2-seed0", 0, 96, 2, 26.7, 26.9, half=1.1)]
    other = _sized("epochs=30-seed0", 0, 64, 1, 27.6, 25.9)
    other["changed"] = {"epochs": "30"}  # another recipe: not on this figure
    for entry in entries + [other]:
        (tmp_path / f"{entry['name']}.json").write_text(json.dumps(entry))
    points = study.flops_points(study.load_results(tmp_path))
    # One dense point per (size, seed), one MoE point per run; every number from the files.
    dense = sorted((p["size"], p["seed"], p["top1"], p["mflops"]) for p in points if p["model"] == "dense")
    assert dense == [("6×64", 0, 25.0, 12.16), ("6×64", 1, 25.1, 12.16), ("6×96", 0, 26.7, 18.24)]
    moe = {(p["size"], p["k"], p["seed"]): (p["top1"], p["half95"]) for p in points if p["model"] == "moe"}
    assert moe == {("6×64", 1, 0): (25.2, pytest.approx(1.0)), ("6×64", 1, 1): (25.0, 0.0),
                   ("6×64", 2, 0): (25.5, pytest.approx(0.9)), ("6×96", 1, 0): (26.4, 0.0),
                   ("6×96", 2, 0): (26.9, pytest.approx(1.1))}
    needs_matplotlib()
    assert study.main(["--results", str(tmp_path), "flops-plot"]) == 0
    picture = Image.open(tmp_path / "top1_vs_flops.png")
    assert picture.size == (720, 460) and len(picture.convert("RGB").getcolors(maxcolors=10**6)) > 3
    with pytest.raises(ValueError, match="no recorded run"):
        study.plot_top1_vs_flops([other], tmp_path / "none.png")


def test_delta_per_epoch_and_the_long_runs_stop_rule(tmp_path):
    def entry(deltas, every=1):
        epochs = range(every, every * len(deltas) + 1, every)
        dense = [{"epoch": e, "eval_top1": 20.0, "train_top1": 30.0} for e in epochs]
        moe = [{"epoch": e, "eval_top1": 20.0 + d, "train_top1": 31.0} for e, d in zip(epochs, deltas)]
        dense.append({"epoch": every * len(deltas) + 1, "eval_top1": 21.0})  # dense evaluated, the MoE not yet
        return {"name": "long-seed0", "dense": {"history": dense}, "moe": {"history": moe},
                "paired": {"delta": deltas[-1], "ci95": [deltas[-1] - 1.0, deltas[-1] + 1.0]}}

    assert study.delta_per_epoch(entry([0.5, -0.25, 1.0])) == [(1, 0.5), (2, -0.25), (3, 1.0)]
    # Five evaluations in a row below 0, all after epoch 60: fires at the fifth; a tie (0) breaks the run.
    trailing = [0.5] * 60 + [-0.1] * 4 + [0.0] + [-0.2] * 5 + [0.3] * 30
    assert study.stop_rule_fired(entry(trailing)) == 70
    assert study.stop_rule_fired(entry([0.5] * 56 + [-1.0] * 8 + [0.5] * 36)) is None  # 57-60 do not count: 4 after
    assert study.stop_rule_fired(entry([0.5] * 56 + [-1.0] * 9 + [0.5] * 35)) == 65
    assert study.stop_rule_fired(entry([0.5] * 100)) is None
    assert study.stop_rule_fired(entry([-1.0] * 20, every=4)) == 80  # evaluations, not epochs: 64, 68, ..., 80
    # `table` of the long grid: mean Δ per 10 epochs, and the stop rule's verdict for each run.
    fired, held = entry(trailing), {**entry([0.5] * 20 + [1.5] * 5), "name": "long-seed1"}
    rows = study.delta_blocks_table([fired, held], study.GRIDS["long"]["stop_rule"])
    assert rows[3].startswith("| run | Δ epochs 1-10 | Δ epochs 11-20 |") and "Δ epochs 91-100 |" in rows[3]
    assert rows[5].startswith("| long-seed0 | +0.50 | ") and rows[5].endswith(" | +0.30 | fired at epoch 70 |")
    assert " | +0.50 | -0.14 | +0.30 | " in rows[5]  # epochs 61-70: (4 x -0.1 + 0 + 5 x -0.2) / 10
    assert rows[6] == "| long-seed1 | +0.50 | +0.50 | +1.50 | - | - | - | - | - | - | - | not fired (to epoch 25) |"
    for grid, runs in (("long", [fired, held]), ("data-scale", [fired])):
        text = study.table([{**r, "changed": {}, "train_config": {"epochs": 100}, "delta_top1": 0.0} for r in runs],
                           study.GRIDS[grid])
        assert ("stop rule" in text) == (grid == "long")
    needs_matplotlib()
    path = study.plot_delta_curve(entry(trailing), tmp_path / "delta.png")
    assert Image.open(path).size == (560, 320)
    with pytest.raises(ValueError, match="no epoch where both"):
        study.plot_delta_curve({"name": "x", "dense": {"history": []}, "moe": {"history": []}}, tmp_path / "x.png")


def test_table_pools_a_recipes_seeds_from_their_predictions(tmp_path):
    """The recipe table's pooled column: tinymoe.lab.paired_difference on the seeds' stacked per-image
    correctness, read back from RESULTS/predictions/; '-' when a seed's predictions are missing or were
    scored on other images."""
    from tinymoe.lab import paired_difference

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 200, 500)
    runs, dense_ok, moe_ok = [], [], []
    for seed in (0, 1):
        dense = np.where(rng.random(500) < 0.3, labels, (labels + 1) % 200)
        moe = np.where(rng.random(500) < 0.4, labels, (labels + 1) % 200)
        entry = {"name": f"deit-seed{seed}", "changed": {"regularisation": "deit"}, "train_config": {"epochs": 100},
                 "delta_top1": 100 * (np.mean(moe == labels) - np.mean(dense == labels))}
        study.write_predictions(tmp_path, entry, labels, dense, moe, None, None)
        runs.append(entry)
        dense_ok.append(dense == labels)
        moe_ok.append(moe == labels)
    lo, hi = paired_difference(np.stack(dense_ok), np.stack(moe_ok)).interval()
    assert lo > 0  # the MoE's 40% against dense's 30% on 2 x 500 images: ahead beyond the noise
    row = next(line for line in study.table(runs, None, tmp_path).splitlines() if line.startswith("| regularisation=deit"))
    assert row.endswith(f"| [{lo:+.2f}, {hi:+.2f}]: MoE ahead |") and row.startswith("| regularisation=deit | 2 | ")
    without_folder = study.table(runs).splitlines()  # no predictions folder: no pooled interval
    assert next(line for line in without_folder if line.startswith("| regularisation")).endswith("| - |")
    study.write_predictions(tmp_path, runs[1], (labels + 1) % 200, labels, labels, None, None)  # other val images
    assert study.pooled_difference(runs, tmp_path) is None
    (tmp_path / "predictions" / "deit-seed1.npz").unlink()
    assert study.pooled_difference(runs, tmp_path) is None


def test_the_summary_of_every_pair_and_its_verdict(tmp_path):
    assert [study.verdict(ci) for ci in ([0.1, 1.9], [-2.0, -0.1], [-0.9, 1.1])] == ["MoE ahead", "MoE behind", "tie"]

    def record(folder, grid, name, levels, dense, moe, ci, **extra):
        changed = {f: lv for f, lv in levels.items() if lv != "no"}
        entry = {"name": name, "grid": grid, "levels": levels, "changed": changed, "train_images": 90000,
                 "train_config": {"epochs": 15}, "dense": {"top1": dense}, "moe": {"top1": moe},
                 "paired": {"delta": moe - dense, "ci95": [moe - dense - ci, moe - dense + ci]}, **extra}
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / f"{name}.json").write_text(json.dumps(entry))
        return entry

    record("study", "tiny-imagenet", "base-seed0", {"upcycle": "no"}, 25.0, 25.5, 1.0)
    record("study", "tiny-imagenet", "upcycle=dense-continued-seed0", {"upcycle": "dense-continued"}, 25.0, 28.5, 1.0)
    upcycled = [record("study", "tiny-imagenet", "upcycle=yes-seed0", {"upcycle": "yes"}, 25.0, 27.0, 1.0,
                       paired_vs_dense_continued={"delta": -1.5, "ci95": [-2.5, -0.5]}),
                record("study", "tiny-imagenet", "upcycle=yes-seed1", {"upcycle": "yes"}, 25.0, 27.0, 1.0,
                       paired_vs_dense_continued={"delta": -0.5, "ci95": [-1.5, 0.5]})]
    record("data-scale", "data-scale", "train-fraction=0.5-seed0", {}, 21.0, 19.0, 1.0)
    long_runs = [record("long", "long", "base-seed0", {}, 30.0, 31.5, 1.0),
                 record("long", "long", "base-seed1", {}, 30.0, 30.5, 1.0)]
    record("long", "other-grid", "ignored-seed0", {}, 30.0, 31.5, 1.0)  # a record of another grid: not counted
    labels = np.arange(8) % 200  # the long seeds' predictions: seed 0 +2 images of 8, seed 1 +1
    for entry, moe_right in zip(long_runs, (6, 5)):
        study.write_predictions(tmp_path / "long", entry, labels, np.where(np.arange(8) < 4, labels, labels + 1),
                                np.where(np.arange(8) < moe_right, labels, labels + 1), None, None)
    for entry in upcycled:  # their predictions hold the first-stage dense model, not the pair's comparator
        study.write_predictions(tmp_path / "study", entry, labels, labels, labels, None, None)
    text = study.summary(tmp_path)
    pairs, seeds = text.split("\n\n")[1], text.split("\n\n")[-1]
    assert pairs.splitlines()[2:] == [
        "| study | base-seed0 | 90,000 | 15 | 25.00 | 25.50 | +0.50 ± 1.00 | tie |",
        "| study | upcycle=yes-seed0 (vs dense trained on as long) | 90,000 | 15 + 15 | 28.50 | 27.00 | -1.50 ± 1.00 | MoE behind |",
        "| study | upcycle=yes-seed1 (vs dense trained on as long) | 90,000 | 15 + 15 | 27.50 | 27.00 | -0.50 ± 1.00 | tie |",
        "| data-scale | train-fraction=0.5-seed0 | 90,000 | 15 | 21.00 | 19.00 | -2.00 ± 1.00 | MoE behind |",
        "| long | base-seed0 | 90,000 | 15 | 30.00 | 31.50 | +1.50 ± 1.00 | MoE ahead |",
        "| long | base-seed1 | 90,000 | 15 | 30.00 | 30.50 | +0.50 ± 1.00 | tie |"]
    assert text.split("\n\n")[2] == "6 pairs: 1 MoE ahead, 3 tie, 2 MoE behind (by the val-image interval of each pair alone)."
    # Pooled long: seed 0's per-image differences are [0]*4 + [1, 1, 0, 0], seed 1's [0]*4 + [1, 0, 0, 0];
    # their mean [0]*4 + [1, 0.5, 0, 0] gives Δ = 1.5/8 = 18.75 points, and 8 images leave it a tie.
    d = np.array([0, 0, 0, 0, 1, 0.5, 0, 0])
    half = 1.96 * 100 * d.std(ddof=1) / np.sqrt(8)
    assert seeds.splitlines()[2:] == [
        "| study | upcycle=yes | 2 | MoE behind, tie | - | - |",
        f"| long | base | 2 | MoE ahead, tie | +18.75 ± {half:.2f} | tie |"]


@pytest.mark.parametrize("grid", ["tiny-imagenet", "data-scale", "long", "mechanism"])
def test_each_committed_table_is_its_records_table(grid):
    """bench/results/<grid>/table.md is regenerated whenever a record changes (`python bench/study.py --grid G table`)."""
    folder = study.HERE / "results" / (study.GRIDS[grid].get("results") or "study")
    results = [r for r in study.load_results(folder) if r.get("grid") == grid]
    assert (folder / "table.md").read_text() == study.table(results, study.GRIDS[grid], folder)


def test_the_committed_summary_is_the_records_summary():
    """bench/results/summary.md is regenerated whenever a record changes (`python bench/study.py summary`)."""
    assert (study.HERE / "results" / "summary.md").read_text() == study.summary()
