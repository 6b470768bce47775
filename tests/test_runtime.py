"""tinymoe.runtime: the malloc tuning takes effect (in a subprocess, so this test process is not changed)
and the recommended environment sizes every thread pool to the cores."""

import os
import platform
import subprocess
import sys

import pytest

from tinymoe.runtime import recommended_environment

FAULTS = """
import resource, sys, numpy as np
from tinymoe.runtime import tune_malloc
ok = tune_malloc() if sys.argv[1] == "tuned" else None
def work():  # a training step's pattern: activations of several sizes kept, then all freed
    for _ in range(5):
        kept = [np.ones(n, np.float32) for n in (500_000, 2_000_000, 1_000_000, 2_000_000, 4_000_000)]
        del kept
work()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
work()
print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux", reason="mallopt tuning is for glibc (Linux)")
def test_tune_malloc_removes_the_page_faults_of_repeated_large_allocations():
    def run(mode):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        ok, faults = out.stdout.split()
        return ok, int(faults)

    ok, tuned = run("tuned")
    _, default = run("default")
    assert ok == "True"
    assert tuned < 500 < 5000 < default  # without tuning the freed heap is trimmed and faulted in again


def test_recommended_environment_sizes_every_pool_the_same():
    env = recommended_environment(3)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        assert env[name] == "3"
    assert env["OPENBLAS_THREAD_TIMEOUT"] == "1"
    assert int(env["MALLOC_MMAP_THRESHOLD_"]) == 32 * 2**20
