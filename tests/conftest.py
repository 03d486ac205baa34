"""Shared helpers: run the project's scripts as a user would, with W&B offline and no API key."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# A tiny, fast configuration: about 2 s of training on 2 CPU cores.
TINY = ["--model=resnet10t", "--img_size=16", "--train_samples=128", "--batch_size=32", "--epochs=2"]


def clean_env(**extra):
    """The environment of a fresh machine: no W&B key or mode, W&B's files kept inside the test folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}, **extra)
    return env


def run(args, cwd, env=None, timeout=240):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env or clean_env(), capture_output=True,
                          text=True, timeout=timeout)


def inspect_wandb(run_dir):
    """What W&B recorded, read back with W&B's own reader."""
    out = subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--summary", "--json", str(run_dir)],
                         capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout)


@pytest.fixture(autouse=True)
def decoded_cache(tmp_path_factory, monkeypatch):
    """train.py's decoded image cache (data.default_cache_dir) goes to the session's temp folder, never ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg_cache"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, so no W&B credentials
    return tmp_path


def train_many(argvs, cwd, env=None, timeout=600):
    """Several train.py runs in one Python process, so the imports are paid once: for tests of many tiny runs.
    Each argv is a list of train.py flags; a run that ends with SystemExit stops the rest."""
    code = "import json, sys, train\nfor argv in json.loads(sys.argv[1]):\n    train.main(argv)\n"
    env = dict(env or clean_env(), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code, json.dumps(argvs)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def summary_of(out):
    return json.loads((Path(out) / "summary.json").read_text())
