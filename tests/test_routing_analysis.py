"""tinymoe.routing_analysis (the numbers) and tinymoe.report (the pictures of a user's run)."""

import json

import numpy as np
import pytest

from tinymoe.routing_analysis import RoutingAnalysis, analyse, analyse_model


def test_analysis_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    logits = np.eye(4)[[0, 1, 2, 0, 3]]          # predictions 0, 1, 2, 0, 3
    labels = np.array([0, 1, 3, 2, 3])           # right, right, wrong, wrong, right
    class_to_group = np.array([0, 1, 2, 0])
    a = analyse(probs, logits, labels, class_to_group)
    assert a.experts.tolist() == [0, 1, 2, 0, 0]  # a tie goes to the lower expert, as the router does
    assert a.superclasses.tolist() == [0, 1, 0, 2, 0]
    assert a.confusion.tolist() == [[2, 0, 1], [0, 1, 0], [1, 0, 0]]
    assert a.load.tolist() == [3, 1, 1]
    assert a.accuracy == [pytest.approx(200 / 3), 100.0, 0.0]
    assert a.router_accuracy == pytest.approx(60.0)
    assert a.entropy[4] == pytest.approx(np.log(3))
    d = json.loads(json.dumps(a.as_dict()))
    back = RoutingAnalysis.from_dict(d)
    assert back.confusion.tolist() == a.confusion.tolist() and d["entropy_max"] == pytest.approx(np.log(3))


def test_an_idle_expert_has_no_accuracy():
    a = analyse(np.array([[0.9, 0.1]]), np.array([[1.0, 0.0]]), np.array([0]), np.array([0]))
    assert a.load.tolist() == [1, 0] and a.accuracy == [100.0, None]


def test_analyse_model_agrees_with_the_forward_pass():
    from tinymoe import no_grad
    from tinymoe.data import make_synthetic, normalize
    from tinymoe.models import ModelConfig, build_model

    data = make_synthetic(n_groups=2, classes_per_group=2, images_per_class=6, size=16, seed=0)
    config = ModelConfig(layers=2, dim=16, heads=2, image_size=16, patch_size=8, num_classes=4, moe_layers=1, experts=2)
    model = build_model(config, seed=0)
    model.set_class_to_group(data.class_to_group)
    a = analyse_model(model, data.images, data.labels, batch_size=5)
    model.eval()
    with no_grad():
        out = model(normalize(data.images))
    assert a.experts.tolist() == out.routing.experts[:, 0].tolist()
    assert a.load.sum() == len(data.labels)


def test_report_draws_a_run(tmp_path):
    pytest.importorskip("matplotlib", reason="the plots extra (matplotlib) is not installed")
    from tinymoe.report import main

    run = tmp_path / "run"
    (run / "dense").mkdir(parents=True)
    (run / "moe-superclass").mkdir()
    header = "epoch,train_loss,eval_loss,eval_top1,eval_top5,lr\n"
    (run / "dense" / "summary.csv").write_text(header + "1,2.0,2.1,30,80,0.001\n2,1.5,1.9,40,85,0.0\n")
    (run / "moe-superclass" / "summary.csv").write_text(header + "1,2.2,2.0,32,81,0.001\n2,1.4,1.9,41,86,0.0\n")
    a = analyse(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.eye(2)[[0, 1, 1]], np.array([0, 1, 0]), np.array([0, 1]))
    model = {"top1": 41.0, "top5": 86.0, "flops": 1e6, "params": 10, "active_params": 8, "images": 3}
    results = {"dense": {**model, "top1": 40.0}, "moe": {**model, "router_accuracy": a.router_accuracy,
                                                         "routing": a.as_dict()}}
    (run / "results.json").write_text(json.dumps(results))
    assert main([str(run)]) == 0
    for name in ("router_confusion.png", "curves.png", "report.md"):
        assert (run / "report" / name).is_file(), name
    text = (run / "report" / "report.md").read_text()
    assert "+1.00 points" in text and "Images per expert: [2, 1]" in text


def test_report_of_a_missing_run_is_one_line(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plots extra (matplotlib) is not installed")
    from tinymoe.report import main

    assert main([str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_report_draws_the_images_each_expert_receives(tmp_path):
    """`--images` on a tiny trained run: the data comes back from the checkpoint's metadata, every val image
    is routed once (the load the training command recorded), and each row holds images its expert got."""
    import subprocess
    import sys

    from PIL import Image

    from tinymoe.checkpoint import load_model
    from tinymoe.pipeline import load_splits
    from tinymoe.report import draw_expert_images, main

    pytest.importorskip("matplotlib", reason='pip install -e ".[plots]"')  # the rest of the report's charts
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "tinymoe.train", "--layers", "2", "--dim", "16", "--heads", "2",
                    "--experts", "3", "--moe-layers", "1", "--patch-size", "8", "--data", "synthetic", "--epochs", "1",
                    "--threads", "1", "--out", str(run)], check=True, capture_output=True)
    assert main([str(run), "--images", "--per-expert", "4"]) == 0
    picture = Image.open(run / "report" / "expert_images.png")
    assert picture.height > 3 * 64 and "![expert_images.png]" in (run / "report" / "report.md").read_text()
    checkpoint = run / "moe-superclass" / "model.npz"
    splits = load_splits("synthetic", experts=3)
    drawn = draw_expert_images(checkpoint, tmp_path / "grid.png", per_expert=4, splits=splits)
    recorded = json.loads((run / "results.json").read_text())["moe"]["routing"]["load"]
    assert drawn["load"] == recorded and sum(recorded) == splits.val_images.shape[0]
    experts = analyse_model(load_model(checkpoint), splits.val_images, splits.val_labels).experts
    for e, row in enumerate(drawn["rows"]):
        assert len(row) == min(4, recorded[e]) and all(experts[i] == e for i in row)
