"""The contract between train.py, sweep.py and lab1/report.py, written once (INTERFACE.md describes it).

A run folder holds config.json, history.csv (one row per evaluation point), summary.json, model.safetensors,
checkpoint/ while a stopped run can still resume, and train.log under sweep.py. This module names those files
and the status words, and is the one place that reads and writes history.csv. It imports nothing heavy, so
sweep.py and report.py can use it without torch.
"""

import csv
import json
import os
from pathlib import Path

CONFIG, HISTORY, SUMMARY, LOG = "config.json", "history.csv", "summary.json", "train.log"

# How a run ended: train.py writes the first six into summary.json; sweep.py adds the last two.
STATUSES = {
    "finished": "every --epochs ran",
    "early_stopped": "--early_stopping_patience evaluations without a lower val/loss",
    "reached_target": "--stop_at_target: val/acc reached --target_val_acc",
    "diverged": "a training loss was NaN or infinite",
    "oom": "out of memory",
    "preempted": "SIGTERM or SIGINT: a checkpoint was saved; the same command resumes it",
    "failed": "sweep.py: non-zero exit or no summary.json",
    "stopped": "sweep.py: Hyperband (early_terminate) stopped it",
}
COMPLETED = ("finished", "early_stopped", "reached_target")  # ended on purpose: test metrics exist


def write_json(path, data):
    """Atomically: a reader, or a kill, never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path):
    """The file's JSON, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_history(path, rows):
    """The whole history, replaced atomically: no partial row, no row twice, whatever kills the writer."""
    path = Path(path)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_history(path):
    """history.csv -> a list of {column: float}; empty cells left out; [] when there is no file yet."""
    try:
        with Path(path).open(newline="") as f:
            return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    except FileNotFoundError:
        return []


# TEMP (sweepagent branch): the contract branch adds the real lists of metric keys; this stands in until the merge.
_METRICS = {"epoch", "update", "examples", "train/loss", "train/acc", "train/lr", "val/loss", "val/acc",
            "time/train_s", "throughput/train_img_s", "noise/trace_sigma", "noise/grad_sq", "noise/b_simple",
            "status", "val/acc_final", "val/loss_final", "test/acc", "test/loss", "time/eval_s", "time/precise_bn_s",
            "time/startup_s", "memory/peak_mb", "memory/peak_reserved_mb", "memory/activations_mb",
            "target/updates", "target/examples", "target/train_s", "target/epoch", "stop/epoch", "stop/step",
            "data/samples_per_rank", "wandb_run_dir"}
_FAMILIES = ("oom/",)


def is_metric(key):
    """Whether train.py logs `key` (a history.csv column or a summary.json key; INTERFACE.md's tables)."""
    return key in _METRICS or key.startswith(_FAMILIES)
