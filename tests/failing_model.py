"""train.py with one more timm model, `oom_resnet`: resnet10t whose forward raises a real out-of-memory
exception at training step $OOM_STEP (counted from 1) on rank $OOM_RANK (default: every rank).
$OOM_ERROR picks the class: torch.OutOfMemoryError (what CUDA raises) or MemoryError (the host).

    python tests/failing_model.py --model=oom_resnet ...      # any train.py flags
    accelerate launch --multi_gpu --num_processes 2 tests/failing_model.py --model=oom_resnet ...
"""

import os
import sys
from pathlib import Path

import timm
import torch
from timm.models import register_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402


class RaisesOOM(torch.nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.net = timm.create_model("resnet10t", **kwargs)
        self.pretrained_cfg = self.net.pretrained_cfg  # what timm.data.resolve_model_data_config reads
        self.steps = 0

    def forward(self, x):
        rank = os.environ.get("OOM_RANK")
        if self.training:
            self.steps += 1
            if self.steps == int(os.environ["OOM_STEP"]) and rank in (None, os.environ.get("RANK", "0")):
                error = {"torch.OutOfMemoryError": torch.OutOfMemoryError, "MemoryError": MemoryError}
                raise error[os.environ.get("OOM_ERROR", "torch.OutOfMemoryError")]("out of memory (test)")
        return self.net(x)


@register_model
def oom_resnet(pretrained=False, **kwargs):
    return RaisesOOM(**kwargs)


if __name__ == "__main__":
    train.main()
