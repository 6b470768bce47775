"""bench/ddp_continue.py, the scale-out path: an exported tinymoe model continues training under PyTorch
DistributedDataParallel (gloo, CPU) on tinymoe's data pipeline, and its first step's loss is tinymoe's
loss on the same batch. Here a world of one process (the script sets it up itself); with torchrun
--nproc-per-node 2 each rank takes every second image of the same global batch.

Needs the `parity` extra (torch, safetensors); skipped without it.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install -e '.[torch]'")
pytest.importorskip("safetensors", reason="safetensors is not installed: pip install -e '.[export]'")
import torch.distributed as dist  # noqa: E402

from tinymoe.export import load_safetensors, save_safetensors  # noqa: E402
from tinymoe.models import ModelConfig, build_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import ddp_continue  # noqa: E402


@pytest.mark.parametrize("variant", [dict(k=1), dict(routing="token", k=2, router_noise=0.0)])
def test_first_ddp_step_loss_equals_tinymoes_loss_on_the_same_batch(tmp_path, variant):
    # synthetic data: experts groups x 3 classes, 16 px images
    config = ModelConfig(layers=3, dim=32, image_size=16, patch_size=8, num_classes=12, experts=4, moe_layers=2,
                         **variant)
    model = build_model(config, seed=0)
    if config.routing == "superclass":
        model.set_class_to_group(np.arange(12) // 3)
    exported = save_safetensors(model, tmp_path / "m.safetensors")
    out = tmp_path / "continued.safetensors"
    args = ddp_continue.parse_args([str(exported), "--data", "synthetic", "--steps", "3", "--batch-size", "16",
                                    "--out", str(out)])
    images, labels = next(iter(ddp_continue.make_loader(args, config).epoch(0)))  # the pipeline's first batch

    ours = load_safetensors(exported)
    ours.train()
    expected = ours.loss(ours(images), labels, label_smoothing=args.smoothing).total.item()
    try:
        log = ddp_continue.train(args)
    finally:
        dist.destroy_process_group()

    assert [e["step"] for e in log] == [0, 1, 2] and log[0]["world_size"] == 1
    assert log[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert all(np.isfinite(e["loss"]) for e in log)
    continued = load_safetensors(out)  # tinymoe reads the DDP-trained weights back
    assert continued.config == config
    before, after = model.state_dict(), continued.state_dict()
    assert set(before) == set(after)
    assert not np.array_equal(before["head.weight"], after["head.weight"])  # the steps changed the weights
