"""train.py, recording each rank's batch-norm statistics at every evaluation: before and after the ranks
average them (rank_stats/<rank>_<n>_{before,after}.pt in the working folder).

    accelerate launch --multi_gpu --num_processes 2 tests/rank_stats.py --precise_bn ...   # any train.py flags
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402

average = train.average_batch_norm
calls = 0


def recording_average(accelerator, model):
    global calls
    calls += 1
    folder = Path("rank_stats")
    folder.mkdir(exist_ok=True)

    def save(when):
        stats = [t.detach().cpu().clone() for bn in train.batch_norms(model) for t in (bn.running_mean, bn.running_var)]
        torch.save(stats, folder / f"{os.environ.get('RANK', '0')}_{calls}_{when}.pt")

    save("before")
    average(accelerator, model)
    save("after")


train.average_batch_norm = recording_average

if __name__ == "__main__":
    train.main()
