"""The contract between train.py, sweep.py and lab1/report.py (runfiles.py, INTERFACE.md): the status words are
named once, the metric keys a run writes are listed once and documented, results.csv reads back what was
written, and a checkpoint removal cut short is never resumed, whichever program removes it."""

import ast
import fnmatch
import json
import math
import re
import runpy
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import BIN, PATIENCE, ROOT, TINY, clean_env, inspect_wandb, run, summary_of, unlisted_keys

sys.path.insert(0, str(ROOT))
import runfiles  # noqa: E402
import sweep  # noqa: E402
import train  # noqa: E402

PROGRAMS = ("train.py", "sweep.py")  # they name status words by runfiles' constants


# ----------------------------------------------------------------------------------------------
# Status words

@pytest.mark.parametrize("program", PROGRAMS)
def test_programs_name_status_words_only_by_runfiles_constants(program):
    tree = ast.parse((ROOT / program).read_text())
    literals = [(node.lineno, node.value) for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and node.value in runfiles.STATUSES]
    assert literals == [], f"{program}: use runfiles' constants for these status words"


def test_stop_refuses_a_word_that_is_not_a_status():
    for status in runfiles.STATUSES:
        assert train.Stop(status, 1).status == status
    with pytest.raises(ValueError, match="not a status word"):
        train.Stop("out_of_memory", 1)


# ----------------------------------------------------------------------------------------------
# Metric keys: listed in runfiles, documented in INTERFACE.md, and what a real run writes

def interface_table(heading):
    """The backquoted names in the first column of INTERFACE.md's table under `heading`."""
    text = (ROOT / "INTERFACE.md").read_text()
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for cell in rows for name in re.findall(r"`([^`]+)`", cell)}


def test_interface_md_documents_exactly_runfiles_lists():
    assert interface_table("### history.csv") == set(runfiles.POINT_METRICS)
    assert interface_table("### summary.json") == set(runfiles.RUN_METRICS) | set(runfiles.RUN_FIELDS)
    assert interface_table("### Status words") == set(runfiles.STATUSES)


def test_is_metric_knows_every_key_train_py_can_log_and_no_other():
    for key in ("val/acc", "train/lr", "noise/grad_sq", "target/updates", "oom/rss_mb", "oom/phase", "stop/step",
                "memory/peak_mb", "time/startup_s"):
        assert runfiles.is_metric(key), key
    for key in ("val/accuracy", "acc", "status", "oom", "target/*x", "loss"):
        assert not runfiles.is_metric(key), key


def wandb_records(run_dir):
    out = subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--json", str(run_dir)], capture_output=True,
                         text=True, check=True, timeout=PATIENCE)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_a_run_writes_only_listed_keys_and_wandb_plots_each_point_against_epoch(workdir):
    # the most keys one tiny run writes: the gradient noise scale (per point and for the run), a target
    res = run([str(ROOT / "train.py"), *TINY, "--batch_size=16", "--grad_accum_steps=2", "--noise_scale",
               "--target_val_acc=0.2", "--output_dir=out"], cwd=workdir, env=clean_env(HOME=str(workdir)))
    assert res.returncode == 0, res.stderr[-2000:]
    out, s = workdir / "out", summary_of(workdir / "out")
    rows = runfiles.read_history(out / runfiles.HISTORY)
    assert not unlisted_keys(out, inspect_wandb(s["wandb_run_dir"])["summary"])
    defined = [r["metric"] for r in wandb_records(s["wandb_run_dir"]) if r["type"] == "metric"]
    named = {m["name"]: m for m in defined if "name" in m}

    def definition(key):  # as W&B applies them: a key's own define_metric, else the first glob that matches it
        return named.get(key) or next((m for m in defined if fnmatch.fnmatch(key, m.get("glob_name", ""))), {})

    assert "epoch" in named
    for column in rows[0]:
        if column != "epoch":
            assert definition(column).get("step_metric") == "epoch", column
    assert definition("val/acc")["summary"] == {"max": True} and definition("val/loss")["summary"] == {"min": True}

    # the noise scale: per point, the two estimates; for the run, the ratio of their sums
    assert all(r["noise/trace_sigma"] > 0 for r in rows)  # the gradient noise is never zero
    trace, grad_sq = (sum(r[k] for r in rows) for k in ("noise/trace_sigma", "noise/grad_sq"))
    assert s["noise/b_simple"] == pytest.approx(trace / grad_sq) if grad_sq > 0 else math.isnan(s["noise/b_simple"])


# ----------------------------------------------------------------------------------------------
# results.csv

def test_results_csv_reads_back_what_was_written(tmp_path):
    path = tmp_path / runfiles.RESULTS
    assert runfiles.read_results(path) == []  # no file yet
    rows = [{"run_id": "12345678", "status": runfiles.FINISHED, "exit_code": 0, "lr": 1e-05, "batch_size": 16,
             "precise_bn": True, "optimizer": "adamw", "val/acc": 0.9, "test/acc": math.nan},
            {"run_id": "1e100000", "status": runfiles.FAILED, "exit_code": 1, "lr": 0.1, "batch_size": 256}]
    runfiles.write_results(path, rows, ["lr", "batch_size", "precise_bn", "optimizer"])
    assert path.read_text().splitlines()[0] == ("run_id,status,exit_code,lr,batch_size,precise_bn,optimizer,"
                                                "test/acc,val/acc")  # fixed, parameters, then the rest sorted
    back = runfiles.read_results(path)
    assert [sorted(row) for row in back] == [sorted(row) for row in rows]  # empty cells are left out
    for row, written in zip(back, rows, strict=True):
        for key, value in written.items():
            assert type(row[key]) is type(value), key  # a run id stays text, even one that reads as a number
            assert row[key] == value or (math.isnan(value) and math.isnan(row[key])), key
    assert [p.name for p in tmp_path.iterdir()] == [runfiles.RESULTS]  # replaced atomically: no file beside it


# ----------------------------------------------------------------------------------------------
# The checkpoint's one removal rule

def checkpoint(out):
    folder = out / runfiles.CHECKPOINT
    folder.mkdir(parents=True)
    (folder / "optimizer.bin").write_bytes(b"\0" * 64)
    runfiles.write_progress(folder, runfiles.Progress(flags={"lr": 0.1}, updates=3))
    assert runfiles.read_progress(out).updates == 3
    return folder


def cut_short(*args, **kwargs):
    raise KeyboardInterrupt  # a kill in the middle of the removal


@pytest.mark.parametrize("remover", ["train.py", "sweep.py hyperband"])
def test_a_checkpoint_removal_cut_short_is_never_resumed(tmp_path, monkeypatch, remover):
    out = tmp_path / "run"
    checkpoint(out)
    runfiles.write_json(out / runfiles.SUMMARY, {"status": runfiles.PREEMPTED})
    monkeypatch.setattr(shutil, "rmtree", cut_short)
    with pytest.raises(KeyboardInterrupt):
        if remover == "train.py":
            runfiles.remove_checkpoint(out / runfiles.CHECKPOINT)
        else:  # Hyperband stopped the run, which saved a checkpoint on the SIGTERM
            stopped = sweep.Run(out.name, {}, proc=SimpleNamespace(returncode=128 + signal.SIGTERM), stop_sent=0.0)
            sweep.record(stopped, tmp_path)
    assert (out / runfiles.CHECKPOINT / "optimizer.bin").exists()  # the cut left most of it
    assert runfiles.read_progress(out) is None and not runfiles.has_checkpoint(out)  # but nothing to resume


def test_outside_a_git_checkout_the_commit_is_recorded_as_unknown(tmp_path):
    unknown = {"git_commit": "", "git_dirty": ""}
    release = tmp_path / "release"  # a source archive, unpacked
    other = tmp_path / "repo/lab"  # ... inside another repository, whose commit says nothing of this code
    for folder in (release, other):
        folder.mkdir(parents=True)
        shutil.copy(ROOT / "train.py", folder)
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    subprocess.run(["git", "-C", str(tmp_path / "repo"), "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    for folder in (release, other):
        assert runpy.run_path(str(folder / "train.py"))["git_info"]() == unknown, folder
    here = train.git_info()
    assert len(here["git_commit"]) == 40 if (ROOT / ".git").exists() else here == unknown
