"""bench/latency.py runs end to end on a tiny model (its timings are not checked: only the structure of
its result and the weight bytes it reports, which are exact)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="PyTorch is not installed: pip install -e '.[torch]'")
BENCH = Path(__file__).resolve().parent.parent / "bench" / "latency.py"


def test_the_latency_benchmark_runs_on_a_tiny_model(tmp_path):
    cmd = [sys.executable, str(BENCH), "--sizes", "tiny", "--images", "16/8", "--variants", "dense", "moe_k1",
           "moe_k2", "--backends", "numpy", "torch", "--thread-counts", "1", "--runs", "2", "--warmup", "1",
           "--no-save", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = result["rows"]
    assert {(r["variant"], r["backend"]) for r in rows} == {
        (v, b) for v in ("dense", "moe_k1", "moe_k2") for b in ("numpy", "torch")}
    assert all(0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] and r["runs"] == 2 for r in rows)
    assert len(result["load_average_before"]) == 3 and "conditions" in result
    by = {r["variant"]: r for r in rows if r["backend"] == "numpy"}
    # a dense model reads all its weights; a per-image MoE reads all but E - k experts per MoE block
    assert by["dense"]["weight_bytes_touched"] == by["dense"]["weight_bytes_total"]
    expert = (by["moe_k2"]["weight_bytes_touched"] - by["moe_k1"]["weight_bytes_touched"]) // 2  # 2 MoE blocks
    assert expert == 4 * (16 * 64 * 2 + 64 + 16)  # fc1 + fc2 weights and biases of one expert, float32
    assert by["moe_k1"]["weight_bytes_total"] - by["moe_k1"]["weight_bytes_touched"] == 2 * 9 * expert
