"""A Trainer for a tiny model on synthetic data, as the training, parallel and regularisation tests use it."""

from __future__ import annotations

import numpy as np

from tinymoe.models import ModelConfig, build_model, router_class
from tinymoe.training import Trainer, TrainConfig, TrainingData

# Small and fast: a few steps per epoch, a log row every step, no loader thread (deterministic timing).
QUICK = dict(epochs=3, batch_size=16, lr=3e-3, warmup_epochs=0.5, log_every=1, prefetch=0)


def tiny_trainer(out, synthetic, config: ModelConfig, data: TrainingData | None = None, *, dtype=np.float32,
                 seed: int = 3, forward=None, **settings) -> Trainer:
    """A silent Trainer of a fresh `config` model (weights from `seed`) writing to `out`.

    synthetic: a tinymoe.data.make_synthetic dataset (its planted class -> group map feeds superclass
    routing); data: what to train and evaluate on (default: all of `synthetic`, evaluated on its first
    10 images); settings: TrainConfig fields over QUICK."""
    model = build_model(config, seed=seed, dtype=dtype)
    if config.is_moe and router_class(config).needs_superclasses:
        model.set_class_to_group(synthetic.class_to_group)
    if data is None:
        data = TrainingData(synthetic.images, synthetic.labels, eval_images=synthetic.images[:10],
                            eval_labels=synthetic.labels[:10])
    return Trainer(model, TrainConfig(**(QUICK | settings)), data, out, log=lambda *_: None, progress=False,
                   forward=forward)
