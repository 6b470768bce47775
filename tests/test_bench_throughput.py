"""bench/throughput.py runs end to end on a tiny model with 2 shards (its numbers are not checked here:
only that both frameworks' training and sharded inference steps run and report positive rates)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "throughput.py"


def test_the_throughput_benchmark_runs_sharded_on_a_tiny_model():
    cmd = [sys.executable, str(BENCH), "--layers", "2", "--dim", "32", "--model", "moe", "--batch", "8",
           "--image-size", "16", "--patch-size", "8", "--classes", "10", "--rounds", "1", "--steps", "1",
           "--warmup", "1", "--shards", "2", "--threads", "2", "--no-save", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tinymoe_train_img_s"] > 0 and result["tinymoe_infer_img_s"] > 0
