"""The CPU training process keeps freed memory: a step's buffers are reused, not faulted in again."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# Five training steps of a ranker (hidden 256, ~1,400 person-frames); prints the minor page
# faults of the last three, once the first steps have grown the heap to a step's peak.
STEPS = """
import resource, sys
import torch
from msgvip.ranker.host_memory import retain_freed_memory
from msgvip.ranker.model import ImportanceRanker, RankerConfig
from msgvip.ranker.trainer import TrainConfig
if sys.argv[1] == "retain":
    assert retain_freed_memory()
torch.manual_seed(0)
mask = torch.rand(4, 60, 12) < 0.5
mask[:, 0, 0] = True
features = {"appearance": torch.randn(int(mask.sum()), 384)}
model = ImportanceRanker(RankerConfig(hidden=256), {"appearance": 384}).train()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model.zero_grad(set_to_none=True)
    model.loss_terms(model(features, mask), torch.zeros(4, dtype=torch.long), mask.any(1), TrainConfig()).total.backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[2:]))
"""


def _late_step_faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True, env=env, timeout=300)
    return int(out.stdout.split()[-1])


def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in():
    # measured on 2 cores: 24-40 thousand faults in the three steps with glibc's defaults,
    # 4 to 2,400 with the memory retained
    default, retained = _late_step_faults("default"), _late_step_faults("retain")
    assert retained < 0.25 * default, (retained, default)


def test_a_users_malloc_tunables_are_left_alone(monkeypatch):
    from msgvip.ranker.host_memory import retain_freed_memory

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576")
    assert retain_freed_memory() is False
