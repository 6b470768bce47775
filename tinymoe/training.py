"""The training loop: AdamW with warmup + cosine decay, gradient clipping, label smoothing, periodic
evaluation, metrics files, and checkpoints that make a run stoppable and exactly resumable.

    trainer = Trainer(model, TrainConfig(epochs=15), data, out_dir="runs/dense")
    summary = trainer.run(resume=True)      # continues from out_dir/last.npz if it exists

What a run directory holds (`out_dir`):

    train_config.json   the TrainConfig used (a resumed run must use the same one)
    last.npz            checkpoint at the end of every epoch (and on Ctrl-C): model, optimizer moments,
                        epoch, position inside the epoch, the model's RNG state (router noise,
                        stochastic depth and expert dropout masks)
    model.npz           the final model, written when training completes (the stage's artefact)
    metrics.jsonl       one JSON object per line: every `log_every` steps and every evaluation
    summary.csv         one row per epoch: epoch, train_loss, eval_loss, eval_top1, eval_top5, lr

Reproducibility: the batches of epoch e are a pure function of (seed, e) (see BatchLoader), the model's
random draws (router noise, drop-path and dropout masks) come from a generator whose state is
checkpointed, and AdamW's moments are saved exactly, so a run stopped at any step and resumed gives
the same parameters as one that never stopped (on the same machine with the same thread count: BLAS
may sum in a different order with other thread counts).

Regularisation (all off by default): RandAugment, random erasing and mixup/cutmix are data-side
settings of TrainConfig (applied by BatchLoader, see tinymoe.data.augment); stochastic depth and expert
dropout are ModelConfig fields (their masks come from the checkpointed generator passed to the
model as `rng=`). Under mixup/cutmix the batches carry soft targets; the loss uses them (label
smoothing on top), and the logged training accuracy compares with each image's dominant label.

Cores: `TrainConfig.shards` > 1 splits every batch over that many threads, each shard on a replica of
the model that shares its parameters (tinymoe.parallel); the gradient is the whole batch's up to
float rounding, and each shard draws its random masks from its own generator, seeded from the run's,
so a run is reproducible for a given number of shards (and resumable only with the same number).

Divergence: non-finite logits or loss stop the step, and no checkpoint is ever written with NaN/inf
parameters or moments (save_checkpoint refuses them; the run raises TrainingDiverged), so last.npz is
always a state a run can continue from.

Model selection: the final model is the one after the last epoch. Nothing is chosen by validation
accuracy, so the validation set stays an honest estimate (evaluations on it are reported only).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinymoe.atomic import atomic_write, atomic_write_text
from tinymoe.checkpoint import CheckpointError, NonFiniteError, load_checkpoint, load_into, save_checkpoint
from tinymoe.data.augment import Augmentation, dominant_labels
from tinymoe.data.batches import IMAGENET_MEAN, IMAGENET_STD, BatchLoader
from tinymoe.evaluation import evaluate
from tinymoe.optim import AdamW, warmup_cosine_lr
from tinymoe.parallel import ShardPool, add_gradients, check_shardable, replicate, sync_replicas
from tinymoe.tensor import Tensor


@dataclass
class TrainConfig:
    epochs: int = 15  # passes over the training images
    batch_size: int = 256  # images per optimizer step
    lr: float = 2e-3  # peak learning rate, reached at the end of warmup
    min_lr: float = 1e-5  # the cosine decay ends here
    weight_decay: float = 0.05  # AdamW decoupled decay; biases, norms and embeddings are not decayed
    warmup_epochs: float = 1.0  # linear warmup from 0 to lr over this many epochs
    label_smoothing: float = 0.1  # classification target: 1 - s on the label, s spread over all classes
    clip_grad: float | None = None  # clip the global gradient norm to this; None = no clipping (the recipe)
    augment: bool = True  # random crop (padding of `padding` px) + horizontal flip
    padding: int = 4
    pad_mode: str = "reflect"  # what the crop's padding holds: "reflect" (mirrored border) or "zero"
    seed: int = 0  # data order and augmentation; the model's init seed is separate
    eval_every: int = 1  # evaluate on the eval set every n epochs (0: only at the end)
    log_every: int = 50  # steps between metric lines
    max_steps: int | None = None  # stop after this many steps (smoke runs); the schedule is unchanged
    prefetch: int = 2  # batches prepared ahead in a background thread
    shards: int = 1  # split each batch over this many threads (data parallelism, see tinymoe.parallel)
    # ---- regularising augmentation (tinymoe.data.augment); the defaults are off ----
    randaugment_ops: int = 0  # RandAugment ops per image (DeiT: 2); 0 = off
    randaugment_magnitude: float = 9.0  # 0..10 (DeiT: 9)
    random_erase: float = 0.0  # random-erasing probability per image (DeiT: 0.25); 0 = off
    mixup_alpha: float = 0.0  # mixup Beta(alpha, alpha) (DeiT: 0.8); 0 = off
    cutmix_alpha: float = 0.0  # cutmix Beta(alpha, alpha) (DeiT: 1.0); 0 = off
    mix_prob: float = 1.0  # probability that a batch is mixed (when mixup or cutmix is on)
    mix_switch_prob: float = 0.5  # probability of cutmix rather than mixup when both are on

    def augmentation(self, num_classes: int) -> Augmentation:
        """The BatchLoader settings of the regularising augmentations (checks them, too)."""
        return Augmentation(
            randaugment_ops=self.randaugment_ops, randaugment_magnitude=self.randaugment_magnitude,
            erase_prob=self.random_erase, mixup_alpha=self.mixup_alpha, cutmix_alpha=self.cutmix_alpha,
            mix_prob=self.mix_prob, switch_prob=self.mix_switch_prob, num_classes=num_classes,
        )

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"TrainConfig: epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not (self.lr > 0 and self.min_lr >= 0 and self.weight_decay >= 0 and self.warmup_epochs >= 0):
            raise ValueError("TrainConfig: lr must be > 0 and min_lr, weight_decay, warmup_epochs >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"TrainConfig: label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"TrainConfig: clip_grad must be > 0 or None, got {self.clip_grad}")
        if not isinstance(self.shards, int) or self.shards < 1:
            raise ValueError(f"TrainConfig: shards must be an integer >= 1, got {self.shards!r}")
        try:
            self.augmentation(num_classes=1)
        except ValueError as err:
            raise ValueError(f"TrainConfig: {err}") from None


@dataclass
class TrainingData:
    """What a run trains and evaluates on: uint8 (N, H, W, 3) images and int labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    train_indices: np.ndarray | None = None  # a subset of the train arrays (e.g. train minus held-out)
    eval_images: np.ndarray | None = None
    eval_labels: np.ndarray | None = None
    eval_name: str = "val"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD


class ShardedOutput:
    """The outputs of a batch's shards seen as one: the logits (values only) and the expert counts."""

    def __init__(self, outputs):
        self.logits = Tensor(np.concatenate([o.logits.data for o in outputs]))  # (B, classes), no graph
        counts = [o.expert_counts() for o in outputs]
        self._counts = None if counts[0] is None else np.sum(counts, axis=0)

    def expert_counts(self):
        return self._counts


class TrainingDiverged(RuntimeError):
    """The loss, the logits or the parameters became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C (or request_stop): the position was saved to `checkpoint`; run again with resume to continue."""

    def __init__(self, message: str, checkpoint: Path | None):
        super().__init__(message)
        self.checkpoint = checkpoint


class StopRequest:
    """Ctrl-C as a request to stop at the next safe point, shared by everything one run does.

    While `installed()`, the first SIGINT only sets `requested`; whoever runs the work checks it at every
    point where the state on disk is complete (after each step, after each epoch's evaluation and
    checkpoint, between the pipeline's stages) and raises TrainingInterrupted there. A second Ctrl-C
    raises KeyboardInterrupt at once. One object is passed to every Trainer of a run, so a Ctrl-C that
    arrives between two stages, or during a stage's last step or final evaluation, is never forgotten.
    """

    def __init__(self, log=print):
        self.requested = False
        self.log = log

    def __call__(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: the user really wants out now
            raise KeyboardInterrupt
        self.requested = True
        self.log("\nCtrl-C: finishing this step, saving a checkpoint, then stopping (Ctrl-C again to abort)")

    @contextlib.contextmanager
    def installed(self):
        """Route SIGINT to this request (only the main thread can; elsewhere request_stop still works)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


@dataclass
class TrainSummary:
    steps: int
    epochs: int  # epochs completed so far
    completed: bool  # all epochs done (model.npz written)
    seconds: float  # wall time of this call (not of earlier, interrupted calls)
    images_per_second: float
    final_train_loss: float | None
    eval: dict | None  # the last evaluation's EvalResult.as_dict()
    history: list[dict] = field(default_factory=list)  # one dict per epoch (the summary.csv rows)


# What a run made before a TrainConfig field existed did, where that is not the field's default: the
# crop's padding was zeros before pad_mode (whose default is now the recipe's reflect padding).
BEFORE_IT_EXISTED = {"pad_mode": "zero"}


# Settings that only change when the run stops, what it logs, or how batches are prepared, not the
# numbers it computes: a run may be resumed with other values of these.
DOES_NOT_CHANGE_RESULTS = {"max_steps", "log_every", "eval_every", "prefetch"}


def no_decay(name: str, param) -> bool:
    """Parameters excluded from weight decay, as in timm's ViT: biases (also the experts' stacked (E, h)
    biases, which are 2-D), LayerNorm gains (1-D) and the class token / position embedding. Decaying them
    only pulls them towards zero for no benefit."""
    return param.ndim <= 1 or name.endswith(("bias", "cls_token", "pos_embed"))


def make_optimizer(model, cfg: TrainConfig) -> AdamW:
    decay, plain = [], []
    for name, p in model.named_parameters():
        (plain if no_decay(name, p) else decay).append(p)
    groups = [{"params": decay}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most max_norm; return the norm before."""
    grads = [p.grad for p in params if p.grad is not None]
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
    if total > max_norm:
        scale = np.float32(max_norm / (total + 1e-6))
        for g in grads:
            g *= scale.astype(g.dtype)
    return total


def _progress_enabled() -> bool:
    return sys.stderr.isatty()


class Trainer:
    """Trains `model` on `data` with `cfg`, writing everything to `out_dir` (see the module docstring)."""

    def __init__(
        self, model, cfg: TrainConfig, data: TrainingData, out_dir, *, log=print, progress: bool | None = None,
        metadata: dict | None = None, stop: StopRequest | None = None, forward=None,
    ):
        """`metadata` (JSON-serialisable) is stored in every checkpoint, e.g. which data the run used.
        `stop`: the run's StopRequest, when the trainer is one stage of a longer run (see run_pipeline).
        `forward(model, x, y, rng)`, if given, replaces `model(x, rng=rng)` in training steps (the lab's
        teacher forcing, `tinymoe.lab.teacher_forced_forward`)."""
        self.model, self.cfg, self.data = model, cfg, data
        self.forward = forward or (lambda model_, x, _y, rng: model_(x, rng=rng))
        self.metadata = dict(metadata or {})
        self.out_dir = Path(out_dir)
        self.log = log
        self.progress = _progress_enabled() if progress is None else progress
        self.loader = BatchLoader(
            data.train_images,
            data.train_labels,
            cfg.batch_size,
            shuffle=True,
            drop_last=True,  # equal batch sizes: every step's gradient has the same scale
            seed=cfg.seed,
            augment=cfg.augment,
            padding=cfg.padding,
            pad_mode=cfg.pad_mode,
            mean=data.mean,
            std=data.std,
            indices=data.train_indices,
            prefetch=cfg.prefetch,
            augmentation=cfg.augmentation(model.config.num_classes),
        )
        if len(self.loader) == 0:
            raise ValueError(
                f"Trainer: {self.loader.indices.size} training images give no full batch of {cfg.batch_size}; "
                "lower the batch size"
            )
        self.steps_per_epoch = len(self.loader)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.optimizer = make_optimizer(model, cfg)
        check_shardable(model.config, cfg.shards)
        self.pool = ShardPool(cfg.shards)
        self.replicas = replicate(model, cfg.shards - 1)  # share the model's arrays; own gradients
        # The model's randomness in training (router noise of token routing, stochastic depth, expert
        # dropout): its own generator, checkpointed with the run.
        self.rng = np.random.default_rng([cfg.seed, 0x7E57])
        self.step = 0  # optimizer steps done
        self.history: list[dict] = []
        self._epoch_stats = self._new_epoch_stats()
        self.stop = stop if stop is not None else StopRequest(log)

    # ----------------------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.npz"

    @property
    def final_path(self) -> Path:
        return self.out_dir / "model.npz"

    def _save(self, path: Path, **kwargs) -> None:
        """save_checkpoint, except that parameters (or optimizer moments) gone NaN/inf stop the run as
        diverged: the previous checkpoint stays the last good one."""
        try:
            save_checkpoint(path, self.model, **kwargs)
        except NonFiniteError as err:
            self._diverged(f"after the update, {str(err).split(': ', 1)[1]}")

    def _save_last(self, epoch: int, position: int) -> None:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "step": self.step,
            "epoch": epoch,
            "position": position,  # steps already done inside `epoch`
            "epoch_stats": self._epoch_stats,  # what the epoch's summary row is computed from, so far
            "history": self.history,
        }
        self._save(self.last_path, state=state, metadata={**self.metadata, "train_config": asdict(self.cfg)})

    def _restore(self) -> tuple[int, int]:
        """Load last.npz into the model/optimizer/RNG; return (epoch, position) to continue from."""
        ckpt = load_checkpoint(self.last_path)
        # A setting missing from an older checkpoint did not exist when it was written, so that run used
        # the behaviour from before the setting: its default, or BEFORE_IT_EXISTED where the default has
        # since become the calibrated recipe's.
        saved_cfg = {**asdict(TrainConfig()), **BEFORE_IT_EXISTED, **(ckpt.metadata.get("train_config") or {})}
        changed = sorted(
            k for k, v in asdict(self.cfg).items() if k not in DOES_NOT_CHANGE_RESULTS and saved_cfg[k] != v
        )
        if changed:
            hint = ""
            if "shards" in changed:  # the one setting a user changes without meaning to: the core count
                hint = (f" (shards: the run used {saved_cfg['shards']}, this one {self.cfg.shards}; on the command "
                        f"line that is --threads {saved_cfg['shards']})")
            raise CheckpointError(
                f"{self.last_path}: was written with a different training configuration (differs in {changed}"
                f"{hint}); resume with the same settings, or use a new output directory"
            )
        # Which training images (tinymoe.pipeline's metadata): a resumed stage must go on with the same ones.
        # (A checkpoint from before --train-fraction existed trained on the whole fraction, 1.0.)
        if "train_fraction" in self.metadata and ckpt.metadata.get("train_fraction", 1.0) != self.metadata["train_fraction"]:
            raise CheckpointError(
                f"{self.last_path}: was trained on train fraction {ckpt.metadata.get('train_fraction', 1.0)}, this run "
                f"asks for {self.metadata['train_fraction']}; resume with the same --train-fraction, or use a new "
                "output directory"
            )
        load_into(ckpt, self.model)
        state = ckpt.state
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.step = int(state["step"])
        self.history = list(state["history"])
        self._epoch_stats = dict(state["epoch_stats"])
        return int(state["epoch"]), int(state["position"])

    def _write_config(self) -> None:
        atomic_write_text(self.out_dir / "train_config.json", json.dumps(asdict(self.cfg), indent=2) + "\n")

    def _append_metrics(self, record: dict) -> None:
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _write_summary_csv(self) -> None:
        columns = ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"]
        with atomic_write(self.out_dir / "summary.csv", "w") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.history)

    def _evaluate(self) -> dict | None:
        d = self.data
        if d.eval_images is None:
            return None
        result = evaluate(self.model, d.eval_images, d.eval_labels, batch_size=256, mean=d.mean, std=d.std,
                          shards=self.cfg.shards)
        return result.as_dict()

    # ----------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the run to save its position and stop after the current step (what Ctrl-C does)."""
        self.stop.requested = True

    def _interrupted(self, where: str) -> TrainingInterrupted:
        return TrainingInterrupted(
            f"interrupted {where}; saved {self.last_path}; run the same command with --resume to continue",
            self.last_path,
        )

    def run(self, resume: bool = False) -> TrainSummary:
        """Train to the end (or to cfg.max_steps). With resume=True, continue from last.npz if present.

        Ctrl-C does not kill the run mid-update: it lets the current step (or evaluation) finish, saves
        last.npz at that exact position and raises TrainingInterrupted (the CLI turns it into a message
        and exit code 130); if it came during the last epoch's evaluation, model.npz is written first.
        A second Ctrl-C aborts at once.
        """
        start_epoch, position = 0, 0
        if resume and self.last_path.exists():
            start_epoch, position = self._restore()
            self.log(f"resuming from {self.last_path}: epoch {start_epoch + 1}, step {self.step}")
        elif self.last_path.exists() and not resume:
            raise FileExistsError(
                f"{self.last_path} exists: a run was already started in {self.out_dir}; pass resume to continue "
                "it, or choose another output directory"
            )
        self._write_config()  # only now: a refused resume leaves the run's files as they were
        with self.stop.installed():
            return self._run_epochs(start_epoch, position)

    def _run_epochs(self, start_epoch: int, position: int) -> TrainSummary:
        cfg = self.cfg
        self.model.train()
        started = time.perf_counter()
        images_seen, last_eval, train_loss = 0, None, None
        for epoch in range(start_epoch, cfg.epochs):
            stats = self._epoch_stats
            t_epoch = time.perf_counter()
            bar = tqdm(
                total=self.steps_per_epoch, initial=position, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not self.progress, leave=False, dynamic_ncols=True,
            )
            batches = self.loader.epoch(epoch)
            for index, (x, y) in enumerate(batches):
                if index < position:  # resuming mid-epoch: these batches were already trained on
                    continue
                if self.stop.requested or (cfg.max_steps is not None and self.step >= cfg.max_steps):
                    break
                lr = warmup_cosine_lr(self.step, self.total_steps, self.warmup_steps, cfg.lr, cfg.min_lr)
                terms, out = self.train_step(x, y, lr)
                position = index + 1
                labels = dominant_labels(y)  # y itself, unless mixing made soft targets
                images_seen += labels.size
                stats["loss_sum"] += terms["loss"]
                stats["steps"] += 1
                stats["correct"] += int(np.sum(np.argmax(out.logits.data, axis=1) == labels))
                stats["seen"] += int(labels.size)
                counts = out.expert_counts()
                if counts is not None:
                    stats["expert_counts"] = counts if stats["expert_counts"] is None else stats["expert_counts"] + counts
                rate = images_seen / max(time.perf_counter() - started, 1e-9)
                accuracy = 100 * stats["correct"] / stats["seen"]
                bar.set_postfix(loss=f"{terms['loss']:.3f}", acc=f"{accuracy:.1f}", img_s=f"{rate:.0f}")
                bar.update(1)
                if self.step % cfg.log_every == 0:
                    self._append_metrics({"step": self.step, "epoch": epoch + 1, "lr": lr, **terms})
            bar.close()
            batches.close()  # a generator: closing it stops the prefetch thread now, not at garbage collection
            if position < self.steps_per_epoch:  # stopped inside the epoch: Ctrl-C or max_steps
                self._save_last(epoch, position)
                if self.stop.requested:
                    raise self._interrupted(f"at step {self.step} (epoch {epoch + 1}, batch {position})")
                break
            train_loss = stats["loss_sum"] / stats["steps"]
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "train_top1": 100 * stats["correct"] / stats["seen"],
                "lr": warmup_cosine_lr(self.step, self.total_steps, self.warmup_steps, cfg.lr, cfg.min_lr),
                "seconds": time.perf_counter() - t_epoch,
            }
            if stats["expert_counts"] is not None:
                row["expert_counts"] = [int(c) for c in stats["expert_counts"]]
                self._warn_on_collapse(epoch, stats["expert_counts"])
            if epoch + 1 == cfg.epochs or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
                last_eval = self._evaluate()
                if last_eval is not None:
                    row.update(eval_loss=last_eval["loss"], eval_top1=last_eval["top1"], eval_top5=last_eval["top5"])
                    self._append_metrics({"step": self.step, "epoch": epoch + 1, "eval": self.data.eval_name, **last_eval})
            self.history.append(row)
            self._write_summary_csv()
            position = 0
            self._epoch_stats = self._new_epoch_stats()
            self._save_last(epoch + 1, 0)  # saved before it is logged: an epoch the log shows survives a kill
            self.log(self._epoch_line(row))
            if self.stop.requested and epoch + 1 < cfg.epochs:  # Ctrl-C during the epoch's last step or evaluation
                raise self._interrupted(f"after epoch {epoch + 1} (step {self.step})")

        completed = bool(self.history) and self.history[-1]["epoch"] == cfg.epochs
        if completed:
            self._save(self.final_path, metadata={**self.metadata, "train_config": asdict(cfg), "history": self.history})
            if self.stop.requested:  # the stage is complete and saved; the run stops before anything else
                raise TrainingInterrupted(
                    f"interrupted at the end of training; saved {self.final_path}; run the same command with "
                    "--resume to continue with what comes next",
                    self.final_path,
                )
        seconds = time.perf_counter() - started
        return TrainSummary(
            steps=self.step,
            epochs=len(self.history),
            completed=completed,
            seconds=seconds,
            images_per_second=images_seen / max(seconds, 1e-9),
            final_train_loss=train_loss,
            eval=last_eval,
            history=self.history,
        )

    @staticmethod
    def _new_epoch_stats() -> dict:
        return {"loss_sum": 0.0, "steps": 0, "correct": 0, "seen": 0, "expert_counts": None}

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float):
        """One optimizer step. y: int labels (B,), or soft targets (B, C) under mixup/cutmix."""
        cfg = self.cfg
        if cfg.shards == 1:
            self.optimizer.zero_grad()
            values, out = self._forward_backward(self.model, x, y, self.rng, weight=None)
        else:
            values, out = self._sharded_forward_backward(x, y)
        if cfg.clip_grad is not None:
            values["grad_norm"] = clip_grad_norm(self.optimizer.params, cfg.clip_grad)
        self.optimizer.lr = lr
        self.optimizer.step()
        self.step += 1
        return values, out

    def _forward_backward(self, model, x, y, rng, weight):
        """Forward, loss and backward of one batch (or shard) on `model`; returns (loss terms, output).

        `weight` seeds the backward pass (None: 1, the plain gradient of this batch's mean loss)."""
        # The rng draws the router noise of token routing, stochastic depth and expert dropout masks.
        out = self.forward(model, x, y, rng)
        # Check the outputs before the loss: cross_entropy refuses non-finite logits with a ValueError,
        # but here the right report is *which step* diverged and where the last good state is.
        if not np.all(np.isfinite(out.logits.data)):
            self._diverged("the model's logits contain NaN or inf")
        terms = model.loss(out, y, label_smoothing=self.cfg.label_smoothing)
        values = terms.as_dict()
        if not math.isfinite(values["loss"]):
            self._diverged(f"the loss became {values['loss']} ({values})")
        if weight is None:
            terms.total.backward()
        else:
            terms.total.backward(np.asarray(weight, dtype=terms.total.data.dtype))
        return values, out

    def _sharded_forward_backward(self, x, y):
        """The batch split into cfg.shards slices, each on its own thread and model replica; the loss and
        its gradient are the shards' weighted by their share of the batch (see tinymoe.parallel)."""
        n = x.shape[0]
        # One generator per shard for its random masks, seeded from the run's generator (checkpointed):
        # reproducible for a given number of shards.
        bounds = self.pool.bounds(n)
        rngs = [np.random.default_rng(seed) for seed in self.rng.integers(2**63, size=len(bounds))]
        models = [self.model, *self.replicas]
        sync_replicas(self.model, self.replicas)
        self.optimizer.zero_grad()

        def shard(index, start, stop):
            share = (stop - start) / n  # weights both the shard's gradient and its logged loss terms
            values, out = self._forward_backward(models[index], x[start:stop], y[start:stop], rngs[index], share)
            return share, values, out

        results = self.pool.run(shard, bounds)
        add_gradients(self.model, self.replicas[: len(results) - 1])
        values = {key: sum(share * v[key] for share, v, _ in results) for key in results[0][1]}
        return values, ShardedOutput([out for _, _, out in results])

    def _diverged(self, what: str):
        where = f"the last good checkpoint is {self.last_path}" if self.last_path.exists() else "no checkpoint was saved yet"
        raise TrainingDiverged(
            f"training diverged at step {self.step + 1}: {what}; {where}. Lower --lr, use --clip-grad, "
            "or check the input data for NaN; then resume from the checkpoint or start again"
        )

    def _warn_on_collapse(self, epoch: int, counts: np.ndarray) -> None:
        """Expert collapse (most images to one or two experts) is the classic MoE failure: say so."""
        if counts.size == 1:  # one expert (e.g. dense continued training through upcycling): nothing to balance
            return
        share = counts / max(counts.sum(), 1)
        idle = int(np.sum(counts == 0))
        if idle or share.max() > 0.5:
            idle_text = f"{idle} of {counts.size} experts got no images; " if idle else ""
            self.log(
                f"warning: uneven expert load in epoch {epoch + 1}: {idle_text}the busiest expert got "
                f"{100 * share.max():.0f}% (counts {counts.tolist()}); see README, 'Expert collapse'"
            )

    def _epoch_line(self, row: dict) -> str:
        parts = [f"epoch {row['epoch']}", f"train loss {row['train_loss']:.4f}", f"train top1 {row['train_top1']:.2f}%"]
        if "eval_top1" in row:
            parts.append(f"{self.data.eval_name} top1 {row['eval_top1']:.2f}% top5 {row['eval_top5']:.2f}%")
        parts.append(f"lr {row['lr']:.2e}")
        parts.append(f"{row['seconds']:.0f}s")
        return " | ".join(parts)


__all__ = [
    "TrainConfig",
    "TrainSummary",
    "Trainer",
    "TrainingData",
    "TrainingDiverged",
    "TrainingInterrupted",
    "StopRequest",
    "clip_grad_norm",
    "make_optimizer",
    "no_decay",
]
