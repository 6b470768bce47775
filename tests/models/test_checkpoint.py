"""Checkpoints: round trips (parameters, config, class->group map, nested training state), clear errors
for wrong configs and broken files, atomic writes, and no pickle anywhere."""

import json
import os

import numpy as np
import pytest

from tinymoe import checkpoint as ckpt_module
from tinymoe.checkpoint import CheckpointError, load_checkpoint, load_model, read_metadata, save_checkpoint
from tinymoe.models import ModelConfig, VisionTransformer


def small(**changes):
    return ModelConfig(layers=2, dim=16, heads=2, image_size=8, patch_size=4, num_classes=6, experts=3).replace(
        **changes
    )


def images(config, batch=3):
    return np.random.default_rng(0).standard_normal((batch, 8, 8, 3)).astype(np.float32)


@pytest.mark.parametrize("routing", ["superclass", "random", "token", "dense"])
def test_round_trip_restores_the_model_exactly(tmp_path, routing):
    config = small(moe_layers=0) if routing == "dense" else small(routing=routing)
    model = VisionTransformer(config, rng=1)
    if routing == "superclass":
        model.set_class_to_group(np.array([2, 0, 1, 1, 0, 2]))
    path = save_checkpoint(tmp_path / "model.npz", model, metadata={"epoch": 3, "top1": 0.25})
    loaded = load_model(path)
    assert loaded.config == config
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        np.testing.assert_array_equal(restored[name], original[name])
        assert restored[name].dtype == original[name].dtype
    if model.class_to_group is None:
        assert loaded.class_to_group is None
    else:
        np.testing.assert_array_equal(loaded.class_to_group, model.class_to_group)
    model.eval(), loaded.eval()
    np.testing.assert_array_equal(loaded(images(config)).logits.data, model(images(config)).logits.data)
    assert read_metadata(path)["metadata"] == {"epoch": 3, "top1": 0.25}


def test_training_state_round_trips_with_its_structure_and_dtypes(tmp_path):
    model = VisionTransformer(small(), rng=0)
    rng = np.random.default_rng(42)
    rng.standard_normal(10)
    state = {
        "optimizer": {
            "step": 17,
            "lr": 1e-3,
            "betas": (0.9, 0.999),
            "moments": {0: np.arange(6, dtype=np.float32).reshape(2, 3), 1: np.ones(4, dtype=np.float64)},
        },
        "rng": rng.bit_generator.state,  # PCG64 state: 128-bit integers in nested dicts
        "history": [1.5, None, "text", np.float32(2.5), np.int64(7)],
        "flags": np.array([True, False]),
    }
    save_checkpoint(tmp_path / "c.npz", model, state=state)
    back = load_checkpoint(tmp_path / "c.npz").state
    assert back["optimizer"]["step"] == 17 and back["optimizer"]["betas"] == (0.9, 0.999)
    assert set(back["optimizer"]["moments"]) == {0, 1}  # int keys stay ints
    np.testing.assert_array_equal(back["optimizer"]["moments"][0], state["optimizer"]["moments"][0])
    assert back["optimizer"]["moments"][0].dtype == np.float32
    assert back["history"][:3] == [1.5, None, "text"]
    assert type(back["history"][3]) is np.float32 and type(back["history"][4]) is np.int64
    np.testing.assert_array_equal(back["flags"], [True, False])
    restored = np.random.default_rng()
    restored.bit_generator.state = back["rng"]
    np.testing.assert_array_equal(restored.standard_normal(5), rng.standard_normal(5))


def test_loading_into_another_config_names_the_differences(tmp_path):
    save_checkpoint(tmp_path / "a.npz", VisionTransformer(small(), rng=0))
    other = VisionTransformer(small(dim=32), rng=0)
    with pytest.raises(CheckpointError, match=r"different model config \(dim: checkpoint 16 vs model 32\)"):
        load_checkpoint(tmp_path / "a.npz", other)
    # Settings that leave every shape alone may be overridden explicitly.
    relaxed = VisionTransformer(small(router_weight=0.5), rng=3)
    with pytest.raises(CheckpointError, match="router_weight"):
        load_checkpoint(tmp_path / "a.npz", relaxed)
    load_checkpoint(tmp_path / "a.npz", relaxed, check_config=False)
    np.testing.assert_array_equal(relaxed.state_dict()["head.weight"], load_model(tmp_path / "a.npz").head.weight.data)
    # ... but not ones that change the parameters.
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_checkpoint(tmp_path / "a.npz", VisionTransformer(small(experts=4), rng=0), check_config=False)


def test_broken_files_give_clear_errors(tmp_path):
    path = save_checkpoint(tmp_path / "good.npz", VisionTransformer(small(), rng=0))
    data = path.read_bytes()

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(garbage)
    # Flip bytes inside a stored array: the zip CRC check catches it.
    corrupt = tmp_path / "corrupt.npz"
    at = data.find(b"PK\x03\x04", 100)  # the second member's header; corrupt the first member's data
    corrupt.write_bytes(data[: at - 20] + bytes(b ^ 0xFF for b in data[at - 20 : at - 10]) + data[at - 10 :])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(corrupt)
    plain = tmp_path / "plain.npz"
    np.savez(plain, weights=np.ones(3))
    with pytest.raises(CheckpointError, match="not a tinymoe checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_metadata_problems_are_reported(tmp_path):
    def rewrite(name, edit):
        src = tmp_path / "good.npz"
        with np.load(src) as z:
            arrays = {k: z[k] for k in z.files}
        doc = json.loads(str(arrays["__metadata__"]))
        edit(doc, arrays)
        arrays["__metadata__"] = np.array(json.dumps(doc))
        out = tmp_path / name
        with open(out, "wb") as f:
            np.savez(f, **arrays)
        return out

    save_checkpoint(tmp_path / "good.npz", VisionTransformer(small(), rng=0))
    newer = rewrite("newer.npz", lambda d, a: d.update(version=99))
    with pytest.raises(CheckpointError, match="format version 99 is not supported"):
        load_checkpoint(newer)
    missing = rewrite("missing.npz", lambda d, a: a.pop("param/head.bias"))
    with pytest.raises(CheckpointError, match="'head.bias' is listed in the metadata but missing"):
        load_checkpoint(missing)
    bad_config = rewrite("bad_config.npz", lambda d, a: d["config"].update(k=7))
    with pytest.raises(CheckpointError, match="saved config is invalid.*k=7"):
        load_checkpoint(bad_config)


def test_files_hold_no_pickles_and_unsupported_state_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.npz", VisionTransformer(small(), rng=0), state={"x": np.ones(2)})
    with np.load(path, allow_pickle=False) as z:  # an object (pickled) member would raise ValueError here
        arrays = {k: z[k] for k in z.files}
    assert not any(a.dtype.hasobject for a in arrays.values())
    assert "param/head.weight" in arrays and arrays["__metadata__"].dtype.kind == "U"
    with pytest.raises(CheckpointError, match="object array"):
        save_checkpoint(tmp_path / "o.npz", VisionTransformer(small(), rng=0), state={"x": np.array([None, 1])})
    with pytest.raises(CheckpointError, match="value of type set"):
        save_checkpoint(tmp_path / "s.npz", VisionTransformer(small(), rng=0), state={"x": {1, 2}})


def test_writes_are_atomic(tmp_path, monkeypatch):
    model = VisionTransformer(small(), rng=0)
    path = save_checkpoint(tmp_path / "m.npz", model, metadata={"v": 1})
    before = path.read_bytes()

    def failing_savez(f, **arrays):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, metadata={"v": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old checkpoint is untouched
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]  # and no temporary file is left behind
    assert read_metadata(path)["metadata"] == {"v": 1}
    save_checkpoint(path, model, metadata={"v": 2})  # a successful save replaces it
    assert read_metadata(path)["metadata"] == {"v": 2}
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


class _Renamed:
    """A stand-in model whose state dict lacks one parameter and/or has one extra, to write such a file."""

    def __init__(self, model, drop=None, extra=None):
        self.config, self.class_to_group = model.config, model.class_to_group
        self._state = {n: v for n, v in model.state_dict().items() if n != drop}
        if extra is not None:
            self._state[extra] = np.zeros(3, dtype=np.float32)

    def state_dict(self):
        return self._state


@pytest.mark.parametrize("drop, extra", [("head.bias", None), (None, "head.extra"), ("head.bias", "head.bias2")])
def test_a_missing_or_extra_parameter_is_refused_not_ignored(tmp_path, drop, extra):
    model = VisionTransformer(small(), rng=0)
    path = save_checkpoint(tmp_path / "odd.npz", _Renamed(model, drop, extra))
    target = VisionTransformer(small(), rng=1)
    before = {n: v.copy() for n, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, target)
    for name in filter(None, (drop, extra)):
        assert name in str(err.value)
    for name, value in target.state_dict().items():  # nothing was half-loaded
        np.testing.assert_array_equal(value, before[name])
    with pytest.raises(CheckpointError):
        load_model(path)


@pytest.mark.parametrize("where", ["parameter", "state"])
def test_a_non_finite_model_or_state_is_never_written(tmp_path, where):
    from tinymoe.checkpoint import NonFiniteError

    model = VisionTransformer(small(), rng=0)
    path = save_checkpoint(tmp_path / "m.npz", model)
    before = path.read_bytes()
    state = None
    if where == "parameter":
        model.head.bias.data[0] = np.nan
    else:
        state = {"moments": np.array([1.0, np.inf])}
    with pytest.raises(NonFiniteError, match="head.bias" if where == "parameter" else "training state"):
        save_checkpoint(path, model, state=state)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["m.npz"]


def test_the_class_to_group_map_is_a_buffer_and_older_files_with_it_apart_still_load(tmp_path):
    """The map is saved as param/class_to_group (a buffer of state_dict); files from before it was a
    buffer hold it as a top-level `class_to_group` array and must load to the same model."""
    import json
    import zipfile

    model = VisionTransformer(small(), rng=0)
    model.set_class_to_group(np.array([0, 1, 2, 0, 1, 2]))
    assert "class_to_group" in model.state_dict() and "class_to_group" not in dict(model.named_parameters())
    save_checkpoint(tmp_path / "new.npz", model)
    with np.load(tmp_path / "new.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    assert "param/class_to_group" in arrays and "class_to_group" not in arrays
    # The older layout: the map under its own key, not listed among the parameters.
    document = json.loads(str(arrays["__metadata__"]))
    del document["parameters"]["class_to_group"]
    arrays["__metadata__"] = np.array(json.dumps(document))
    arrays["class_to_group"] = arrays.pop("param/class_to_group")
    np.savez(tmp_path / "old.npz", **arrays)
    assert zipfile.is_zipfile(tmp_path / "old.npz")
    for name in ("new.npz", "old.npz"):
        loaded = load_model(tmp_path / name)
        np.testing.assert_array_equal(loaded.class_to_group, model.class_to_group)
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=f"{name}: {key}")
