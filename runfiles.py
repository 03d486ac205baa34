"""The contract between train.py, sweep.py and lab1/report.py, written once (INTERFACE.md describes it).

A run folder holds config.json, history.csv (one row per evaluation point), summary.json, model.safetensors,
checkpoint/ while a stopped run can still resume, and train.log under sweep.py; a sweep folder holds
results.csv. This module names those files, the status words and the metric keys, and is the one place that
reads and writes history.csv, results.csv and a checkpoint's progress.json. It imports nothing heavy, so
sweep.py and report.py can use it without torch.
"""

import contextlib
import csv
import dataclasses
import fnmatch
import json
import math
import os
import shutil
from pathlib import Path

CONFIG, HISTORY, SUMMARY, LOG, MODEL = "config.json", "history.csv", "summary.json", "train.log", "model.safetensors"
RESULTS = "results.csv"  # a sweep folder's: one row per ended run

# ----------------------------------------------------------------------------------------------
# How a run ended. A new status: a constant here, its line in STATUSES, its row in INTERFACE.md.

FINISHED, EARLY_STOPPED, REACHED_TARGET = "finished", "early_stopped", "reached_target"
DIVERGED, OOM, PREEMPTED = "diverged", "oom", "preempted"
FAILED, STOPPED = "failed", "stopped"
STATUSES = {  # train.py writes the first six and failed into summary.json; sweep.py adds stopped
    FINISHED: "every --epochs ran",
    EARLY_STOPPED: "--early_stopping_patience evaluations without a lower val/loss",
    REACHED_TARGET: "--stop_at_target: val/acc reached --target_val_acc",
    DIVERGED: "a training loss was NaN or infinite",
    OOM: "out of memory",
    PREEMPTED: "SIGTERM or SIGINT: a checkpoint was saved; the same command resumes it",
    FAILED: "train.py: an image met mid-stream cannot be read (it resumes once fixed); "
            "sweep.py: non-zero exit or no summary.json",
    STOPPED: "sweep.py: Hyperband (early_terminate) stopped it",
}
COMPLETED = (FINISHED, EARLY_STOPPED, REACHED_TARGET)  # ended on purpose: test metrics exist

# ----------------------------------------------------------------------------------------------
# Metric keys: the same names in history.csv, summary.json, W&B, sweep files and the report. A new key is one
# line here (train.py's define_metric calls are built from these lists) and one row in INTERFACE.md; tests check
# that a run writes no key that is not here, and that INTERFACE.md lists exactly these.

POINT_METRICS = (  # history.csv's columns and W&B's per-point keys, each plotted against `epoch`
    "epoch", "update", "examples",
    "train/loss", "train/acc", "train/lr",
    "val/loss", "val/acc",
    "time/train_s",
    "throughput/train_img_s",
    "noise/trace_sigma", "noise/grad_sq", "noise/b_simple",  # --noise_scale
    "train/acc_clean", "train/acc_noisy", "train/acc_noisy_true",  # --label_noise
    "sharpness/top_eig",  # --sharpness_every
)
RUN_METRICS = (  # summary.json's and W&B's end-of-run metrics
    "epoch", "update", "examples",
    "train/loss", "train/acc",
    "val/acc", "val/loss", "val/acc_final", "val/loss_final",
    "test/loss", "test/acc", "test/confusion_matrix",  # the matrix: W&B only, a table
    "time/train_s", "time/eval_s", "time/precise_bn_s", "time/compile_s", "time/sharpness_s", "time/startup_s",
    "throughput/train_img_s",
    "memory/peak_mb", "memory/peak_reserved_mb", "memory/activations_mb",
    "target/updates", "target/examples", "target/train_s", "target/epoch",  # --target_val_acc
    "noise/b_simple",  # --noise_scale
    "train/acc_clean", "train/acc_noisy", "train/acc_noisy_true",  # --label_noise: the last point's
    "sharpness/top_eig",  # --sharpness_every: the last measured
    "stop/epoch", "stop/step",  # diverged, oom, preempted, early_stopped, reached_target
    "oom/*",  # oom: the batch size, the phase, and the device's or host's memory at that moment
    "data/samples_per_rank",
)
RUN_FIELDS = ("status", "error", "checkpoint_error", "wandb_run_dir")  # summary.json entries that are not metrics


def is_metric(key, among=POINT_METRICS + RUN_METRICS):
    """Whether train.py can log `key` (a key of a family such as oom/* included): per point or at the end of a run,
    or as among says."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in among)


# ----------------------------------------------------------------------------------------------
# JSON and history.csv, replaced atomically

@contextlib.contextmanager
def replacing(path):
    """-> a file to write beside path, then renamed over it: a reader or a kill never sees half a file, and a
    writer that fails (a full disk) leaves no partial one behind."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path, data):
    """Atomically: a reader, or a kill, never leaves half a file."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def read_json(path):
    """The file's JSON, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_csv(path, rows, columns, **dialect):
    """Rows (dicts; a missing cell is empty) under a header of columns, replaced atomically: no partial row,
    no row twice, whatever kills the writer."""
    with replacing(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), restval="", **dialect)
        writer.writeheader()
        writer.writerows(rows)


def write_history(path, rows):
    """The whole history, its columns in the order the rows first have them."""
    write_csv(path, rows, dict.fromkeys(k for row in rows for k in row))


def read_history(path):
    """history.csv -> a list of {column: number}, whole numbers as int (so a resumed run writes back 8, not 8.0);
    empty cells left out; [] when there is no file yet."""
    try:
        with Path(path).open(newline="") as f:
            return [{k: parse_cell(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    except FileNotFoundError:
        return []


# ----------------------------------------------------------------------------------------------
# results.csv: one row per ended run of a sweep

RESULT_COLUMNS = ("run_id", "status", "exit_code")  # then the parameters, then the summary scalars, sorted
TEXT_COLUMNS = ("run_id", "status", "git_commit")  # always text, whatever they look like ("1234e567" included)


def parse_cell(text):
    """A results.csv cell back to the value written: '16' -> 16, '1e-05' -> 1e-05, 'True' -> True, 'nan' -> nan."""
    if text in ("True", "False"):
        return text == "True"
    for parse in (json.loads, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def read_results(path):
    """results.csv -> a list of {column: value}, each value parsed back (int, float, bool or str); empty cells
    left out; [] when there is no file."""
    try:
        with Path(path).open(newline="") as f:
            return [{k: v if k in TEXT_COLUMNS else parse_cell(v) for k, v in row.items() if v not in ("", None)}
                    for row in csv.DictReader(f)]
    except FileNotFoundError:
        return []


def write_results(path, rows, param_names):
    """Rows of {column: value} -> results.csv, replaced atomically: RESULT_COLUMNS, the parameters, then every
    other key of any row, sorted."""
    fixed = (*RESULT_COLUMNS, *param_names)
    metrics = sorted({k for row in rows for k in row} - set(fixed))
    write_csv(path, rows, (*fixed, *metrics), lineterminator="\n")


# ----------------------------------------------------------------------------------------------
# The checkpoint: out/checkpoint/ is accelerator.save_state plus progress.json. progress.json is written last
# and deleted first, so its presence means a whole checkpoint: a kill at any moment, while one is written,
# swapped in or removed, leaves either a whole checkpoint or none that is ever resumed.

CHECKPOINT, PROGRESS = "checkpoint", "progress.json"


@dataclasses.dataclass
class Progress:
    """Where a run's training loop is: what progress.json holds, beside the states accelerator.save_state keeps."""

    flags: dict  # the flags that change what is trained, as resolved; a resume must give the same
    wandb_run_id: str | None = None  # a resumed run continues the same W&B run
    epoch: int = 0  # the epoch under way, from 0
    step: int = 0  # micro-batches of that epoch done
    updates: int = 0  # optimizer updates done
    examples: int = 0  # training images seen, all processes, up to the last evaluation point
    sums: list = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss sum, correct, images since then
    clock: dict = dataclasses.field(  # seconds
        default_factory=lambda: {"train": 0.0, "eval": 0.0, "precise_bn": 0.0, "compile": 0.0, "sharpness": 0.0})
    interval_s: float = 0.0  # seconds of training since the last evaluation point
    activations_mb: float = math.nan  # memory/activations_mb, measured in the first step
    samples_per_rank: list | None = None  # data/samples_per_rank: images each rank trained in the first epoch


def has_checkpoint(out):
    return (Path(out) / CHECKPOINT / PROGRESS).exists()


def read_progress(out):
    """out/checkpoint's Progress, or None when out holds no whole checkpoint."""
    data = read_json(Path(out) / CHECKPOINT / PROGRESS)
    return Progress(**data) if data else None


def write_progress(folder, progress):
    """The last file of a checkpoint folder: from now on it is whole."""
    write_json(Path(folder) / PROGRESS, dataclasses.asdict(progress))


def checkpoint_tmp(out):
    """Where a new checkpoint is written before swap_in_checkpoint makes it out/checkpoint."""
    return Path(out) / (CHECKPOINT + ".tmp")


def finish_cut_writes(out):
    """What a kill or a full disk left half done in a run folder: a whole checkpoint.tmp beside no whole
    checkpoint/ (the swap was cut short) is swapped in; a partial one (no progress.json), checkpoint.old and any
    other file or folder written beside its final name (*.tmp) are removed."""
    out = Path(out)
    if not has_checkpoint(out) and (checkpoint_tmp(out) / PROGRESS).exists():
        swap_in_checkpoint(out)
    remove_checkpoint(checkpoint_tmp(out))
    remove_checkpoint(out / (CHECKPOINT + ".old"))
    for tmp in out.glob("*.tmp"):
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink()


def swap_in_checkpoint(out):
    out = Path(out)
    final, old = out / CHECKPOINT, out / (CHECKPOINT + ".old")
    remove_checkpoint(old)
    if final.exists():
        final.rename(old)
    checkpoint_tmp(out).rename(final)
    remove_checkpoint(old)


def remove_checkpoint(folder):
    """Delete a checkpoint folder (out/checkpoint, or one beside it), progress.json first: a removal cut short
    leaves a folder that is never resumed."""
    (Path(folder) / PROGRESS).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
