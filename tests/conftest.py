"""Shared helpers: run the project's scripts as a user would, with W&B offline and no API key."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
import runfiles  # noqa: E402

# A tiny, fast configuration: about 2 s of training on 2 CPU cores.
TINY = ["--model=resnet10t", "--img_size=16", "--train_samples=128", "--batch_size=32", "--epochs=2"]
# Seconds a test waits for a process before it calls it hung: far beyond what any needs on a quiet host, so that
# a host busy with other work makes a test slower, never failed.
PATIENCE = 900


def clean_env(**extra):
    """The environment of a fresh machine: no W&B key or mode, W&B's files kept inside the test folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}, **extra)
    return env


def run(args, cwd, env=None, timeout=PATIENCE, **popen):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env or clean_env(), capture_output=True,
                          text=True, timeout=timeout, **popen)


def inspect_wandb(run_dir):
    """What W&B recorded, read back with W&B's own reader."""
    out = subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--summary", "--json", str(run_dir)],
                         capture_output=True, text=True, check=True, timeout=PATIENCE)
    return json.loads(out.stdout)


@pytest.fixture(autouse=True)
def decoded_cache(tmp_path_factory, monkeypatch):
    """train.py's decoded image cache (data.default_cache_dir) goes to the session's temp folder, never ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg_cache"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, so no W&B credentials
    return tmp_path


def train_many(argvs, cwd, env=None, timeout=2 * PATIENCE):
    """Several train.py runs in one Python process, so the imports are paid once: for tests of many tiny runs.
    Each argv is a list of train.py flags; a run that ends with SystemExit stops the rest."""
    code = "import json, sys, train\nfor argv in json.loads(sys.argv[1]):\n    train.main(argv)\n"
    env = dict(env or clean_env(), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code, json.dumps(argvs)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def summary_of(out):
    return json.loads((Path(out) / "summary.json").read_text())


def signalled(argv, cwd, env, signal, at, after=1, group=False, launch=()):
    """train.py (tests/signal_at.py) sending itself SIG<signal> right after its Training.<at> returns for the
    after-th time: at an exact point of the run, however busy the host; with group, to its process group (a
    session of its own: the launcher, if any, and every rank). launch: python's arguments to run it under."""
    env = dict(env, SIGNAL=signal, SIGNAL_AT=at, SIGNAL_AFTER=str(after), **({"SIGNAL_GROUP": "1"} if group else {}))
    return run([*launch, str(ROOT / "tests/signal_at.py"), *argv], cwd=cwd, env=env, start_new_session=True)


def unlisted_keys(out, wandb_summary=None):
    """The keys a run wrote (history.csv, summary.json, and W&B's summary when given) that runfiles does not list."""
    history = {k for row in runfiles.read_history(Path(out) / runfiles.HISTORY) for k in row}
    summary = set(json.loads((Path(out) / runfiles.SUMMARY).read_text()))
    recorded = {k.removesuffix("_table") for k in wandb_summary or {} if not k.startswith("_")}  # W&B's own: _step
    return ({k for k in history if not runfiles.is_metric(k, runfiles.POINT_METRICS)}
            | {k for k in summary if not runfiles.is_metric(k, runfiles.RUN_METRICS) and k not in runfiles.RUN_FIELDS}
            | {k for k in recorded if not runfiles.is_metric(k) and k not in runfiles.RUN_FIELDS})
