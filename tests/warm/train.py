"""This checkout's train.py with three more timm models that fail in their first training step, for sweep.py's
tests: `raises` raises an exception, `exits` calls os._exit(3), as a crashing extension would, and
`resnet_fails_on_resume` is resnet10t until it is resumed from a checkpoint, then raises.
With SIGNAL_AGENT_AFTER=history.csv or summary.json, right after the run first writes that file it sends SIGTERM (or
the signal SIGNAL_AGENT_WITH names, e.g. SIGINT) to the sweep.py agent that runs it, and goes on only once the agent
has passed it on to the run, so that a test of a signal at that moment never depends on how fast the host runs.
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
import signal
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


def sweep_agent():
    """The pid of the nearest ancestor process that runs sweep.py (a warm start's parent is the warm-start server)."""
    pid = os.getppid()
    while not any(arg.endswith(b"sweep.py") for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")):
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
        assert pid > 1, "SIGNAL_AGENT_AFTER: no sweep.py runs this run"
    return pid


received = []  # the signals train.py's handler has had


def count_signals(request):
    """train.Preemption.request, noting each signal it gets."""
    def noted(self, sig, frame):
        received.append(sig)
        return request(self, sig, frame)
    return noted


def signal_agent_after(write, name, sig):
    """write, which then sends sig to the agent once it has written a file called name, and returns once the agent
    has passed it on (train.py's handler runs between this loop's sleeps), or after 120 s if it never does."""
    sent = False

    def then_signal(path, *args, **kwargs):
        nonlocal sent
        write(path, *args, **kwargs)
        if Path(path).name == name and not sent:
            sent = True
            os.kill(sweep_agent(), sig)
            deadline = time.monotonic() + 120
            while not received and time.monotonic() < deadline:
                time.sleep(0.01)
    return then_signal


if __name__ == "__main__":
    print(f"warm start: {WARM}", flush=True)
    if after := os.environ.get("SIGNAL_AGENT_AFTER"):  # here, not above: a warm start runs this file twice
        sig = signal.Signals[os.environ.get("SIGNAL_AGENT_WITH", "SIGTERM")]
        runfiles = train.runfiles
        runfiles.write_json = signal_agent_after(runfiles.write_json, after, sig)
        runfiles.write_history = signal_agent_after(runfiles.write_history, after, sig)
        train.Preemption.request = count_signals(train.Preemption.request)
    train.START = START
    main()
