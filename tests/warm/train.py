"""This checkout's train.py with three more timm models that fail in their first training step, for sweep.py's
tests: `raises` raises an exception, `exits` calls os._exit(3), as a crashing extension would, and
`resnet_fails_on_resume` is resnet10t until it is resumed from a checkpoint, then raises.
Its first line of output says whether torch was imported before it started, which is so only in a warm start
(a fork of sweep.py's warm-start process). sweep.py warm-starts only a program named train.py: hence the name.

    python tests/warm/train.py --model=raises ...      # any train.py flags
"""

import sys
import time

START = time.perf_counter()  # train.py's time/startup_s counts from here: this file starts the run
WARM = "torch" in sys.modules  # before this file imports anything

import importlib.util
import os
import warnings
from pathlib import Path

import timm
import torch
from timm.models import register_model

RESUMING = any((Path(arg.split("=", 1)[1]) / "checkpoint").exists() for arg in sys.argv[1:]
               if arg.startswith("--output_dir="))

if "project_train" not in sys.modules:  # the real train.py, under a name of its own (this file is a train.py)
    sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # its own modules: data.py, runfiles.py
    spec = importlib.util.spec_from_file_location("project_train", Path(__file__).resolve().parents[2] / "train.py")
    sys.modules["project_train"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["project_train"])
train = sys.modules["project_train"]
ConfigError, parse_args, main = train.ConfigError, train.parse_args, train.main


class Fails(torch.nn.Module):
    def __init__(self, how, **kwargs):
        super().__init__()
        self.how, self.net = how, timm.create_model("resnet10t", **kwargs)
        self.pretrained_cfg = self.net.pretrained_cfg  # what timm.data.resolve_model_data_config reads

    def forward(self, x):
        if self.training and (self.how == "raises" or self.how == "on_resume" and RESUMING):
            raise RuntimeError("a bug in the model (test)")
        if self.training and self.how == "exits":
            os._exit(3)  # no Python clean-up at all: no finally, no atexit, no W&B finish
        return self.net(x)


def raises(pretrained=False, **kwargs):
    return Fails("raises", **kwargs)


def exits(pretrained=False, **kwargs):
    return Fails("exits", **kwargs)


def resnet_fails_on_resume(pretrained=False, **kwargs):
    return Fails("on_resume", **kwargs)


with warnings.catch_warnings():  # a warm start runs this file again: this run's models replace the warm-up's
    warnings.simplefilter("ignore")
    for model in (raises, exits, resnet_fails_on_resume):
        register_model(model)

if __name__ == "__main__":
    print(f"warm start: {WARM}", flush=True)
    train.START = START
    main()
