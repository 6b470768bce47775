"""The scale-out path: continue training an exported tinymoe model with PyTorch DistributedDataParallel.

    python -m tinymoe.export run/moe.npz --to safetensors --out moe.safetensors
    torchrun --nproc-per-node 2 bench/ddp_continue.py moe.safetensors --data synthetic --steps 5 \\
        --batch-size 64 --out moe-ddp.safetensors
    python -c "from tinymoe.export import load_safetensors; m = load_safetensors('moe-ddp.safetensors')"

What it does, per step, on every rank (gloo on CPU; NCCL on GPUs is the same script with the model
moved to the device):
  - the global batch comes from tinymoe's own data pipeline (`tinymoe.pipeline.load_splits` +
    `BatchLoader`, the same seed on every rank, so every rank sees the same global batch order and the
    same augmentation) and rank r takes rows r, r + W, r + 2W, ... of it: W ranks together train on
    exactly the batch a single tinymoe process would;
  - forward of `tinymoe.torch_model.VisionTransformer` wrapped in DistributedDataParallel, tinymoe's loss
    (classification CE with label smoothing + router_weight · superclass CE, or the balance terms of
    token routing), backward (DDP all-reduces the gradients), global-norm clipping, AdamW with tinymoe's
    decay rule (`tinymoe.training.no_decay`) and its warm-up + cosine schedule (`tinymoe.optim`);
  - it prints one JSON line per step (rank 0): the loss averaged over the ranks.
At the end rank 0 writes the weights as an exported safetensors file, which tinymoe reads back.

Why plain data parallelism is enough here: with per-image routing every rank holds every expert (a 6x64
Mobile V-MoE with E = 10, 2 MoE blocks, is 0.96 M parameters, 3.8 MB in float32; 12x192 is 10.9 M, 43 MB,
about 175 MB with AdamW's two moments and the gradients), so
each rank runs its own images through their own experts and only the gradients are exchanged, once per
step, like a dense model's. Expert parallelism (experts spread over devices, tokens shipped to them with
all-to-all: tutel, DeepSpeed-MoE) pays only once the experts no longer fit on one device. FSDP (shard
parameters and optimizer state) is the next step for models that do not fit one device at all: swap the
DDP wrapper for torch.distributed.fsdp.fully_shard; nothing else here changes.

Run with one process (python bench/ddp_continue.py ...) it initialises a world of size 1 itself.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tinymoe import torch_model
from tinymoe.data.batches import BatchLoader
from tinymoe.optim import warmup_cosine_lr
from tinymoe.pipeline import load_splits
from tinymoe.training import no_decay


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="an exported safetensors file (python -m tinymoe.export ... --to safetensors)")
    parser.add_argument("--data", default="synthetic", help="'synthetic', 'tiny-imagenet' or a path (as tinymoe.train)")
    parser.add_argument("--data-dir", dest="data", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("-b", "--batch-size", type=int, default=64, help="global batch, split over the ranks")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--min-lr", type=float, default=1e-5)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--smoothing", type=float, default=0.1)
    parser.add_argument("--clip-grad", type=float, default=1.0)
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--out", default=None, help="write the trained weights here (safetensors)")
    return parser.parse_args(argv)


def init_distributed() -> tuple[int, int]:
    """(rank, world size): from torchrun's environment, or a world of one process."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:  # plain `python ddp_continue.py`: a world of size 1
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def make_loader(args, config) -> BatchLoader:
    """tinymoe's pipeline: the same splits and BatchLoader `python -m tinymoe.train` uses."""
    splits = load_splits(args.data, experts=config.experts, synthetic_size=config.image_size, seed=args.seed)
    if splits.image_size != config.image_size:
        raise SystemExit(f"the data has {splits.image_size}px images, the model takes {config.image_size}px")
    return BatchLoader(splits.train_images, splits.train_labels, args.batch_size, shuffle=True, drop_last=True,
                       seed=args.seed, augment=args.augment)


def shard(array: np.ndarray, rank: int, world: int) -> np.ndarray:
    return array[rank::world]


def train(args, batches=None) -> list[dict]:
    """Run `args.steps` DDP steps; returns the per-step log (loss averaged over ranks). `batches`, if given,
    replaces the data pipeline (an iterable of global (images, labels) batches)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rank, world = init_distributed()
    model = torch_model.from_safetensors(args.model).float().train()
    ddp = DistributedDataParallel(model)
    decay = [p for n, p in model.named_parameters() if not no_decay(n, p)]
    plain = [p for n, p in model.named_parameters() if no_decay(n, p)]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": plain, "weight_decay": 0.0}], lr=args.lr,
                                  betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay)
    if batches is None:
        batches = make_loader(args, model.config).epoch(0)
    log = []
    for step, (images, labels) in zip(range(args.steps), batches):
        if images.shape[0] % world:
            raise SystemExit(f"the batch of {images.shape[0]} does not split over {world} ranks")
        lr = warmup_cosine_lr(step, args.steps, args.warmup_steps, args.lr, args.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(shard(images, rank, world)))
        y = torch.from_numpy(np.ascontiguousarray(shard(labels, rank, world)).astype(np.int64))
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(ddp(x), y, label_smoothing=args.smoothing)
        loss.backward()  # DDP averages the gradients over the ranks here
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad) if args.clip_grad else None
        optimizer.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        entry = {"step": step, "loss": float(mean_loss) / world, "lr": lr, "world_size": world,
                 "grad_norm": None if grad_norm is None else float(grad_norm),
                 "seconds": round(time.perf_counter() - start, 4)}
        log.append(entry)
        if rank == 0:
            print(json.dumps(entry), flush=True)
    if args.out and rank == 0:
        path = torch_model.save_safetensors(model, args.out)
        print(json.dumps({"wrote": str(path)}), flush=True)
    dist.barrier()
    return log


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
