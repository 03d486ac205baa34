"""Soak test: interrupt train.py the ways clusters, agents and crashes do, run the same command again, and check
that everything a user reads agrees: the run's files, W&B's record of it, and the exit codes.

    python bench/soak.py [--interruptions 100] [--seed 0] [--write]

Each cycle starts a fresh output folder and runs one command (W&B offline) until it finishes. Every attempt is
interrupted at a random moment of its life in one of the ways of KILLS, then the same command runs again.
After every attempt:
- history.csv holds the evaluation points 1..k of the schedule, each once, in order; summary.json agrees;
- the exit code agrees with the status the attempt wrote (STATUS_EXIT), or is the signal that killed it before
  it wrote one; there is no traceback.
When the run ends:
- its test metrics equal an uninterrupted run's, bit for bit;
- W&B's record equals the files: W&B's history (every W&B run folder of the run id, oldest first, a later one
  replacing a point an earlier one logged past its checkpoint) equals history.csv value by value; the last
  folder's summary equals summary.json key by key; W&B's run ended with exit code 0;
- the folder holds config.json, history.csv, summary.json and model.safetensors, nothing else, and
  summary.json has data/samples_per_rank.
Any other outcome is counted as a failure and described.
"""

import argparse
import json
import math
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
from common import ROOT, TRAIN, add_write_flag, clean_env, report

sys.path.insert(0, str(ROOT))
import runfiles  # noqa: E402

FLAGS = ["--train_samples=256", "--batch_size=32", "--epochs=3", "--evals_per_epoch=2", "--img_size=16"]
POINTS = [4 * k for k in range(1, 7)]  # 8 updates an epoch, a point every 4, 3 epochs
METRICS = ("test/acc", "test/loss", "val/loss_final", "train/loss")
FINAL_FILES = ["config.json", "history.csv", "model.safetensors", "summary.json"]
STATUS_EXIT = {"finished": 0, "preempted": 128 + signal.SIGTERM}
KILLS = {  # how an attempt is interrupted, at a random moment of its life
    "SIGKILL": "SIGKILL to train.py (power loss, the OOM killer)",
    "SIGTERM": "SIGTERM to train.py (an agent stopping it)",
    "SIGTERM+SIGKILL": "SIGTERM to train.py, then SIGKILL within 1.5 s (in the checkpoint write)",
    "job SIGTERM": "SIGTERM to train.py and wandb-core together (Slurm, systemd)",
    "job SIGKILL after the checkpoint": "SIGTERM, then SIGKILL to train.py and wandb-core as soon as the checkpoint "
                                        "is saved, before W&B's finish (a grace period running out)",
    "job SIGKILL after summary.json": "SIGKILL to train.py and wandb-core as soon as summary.json is written "
                                      "(the run's last seconds)",
    "wandb-core SIGKILL": "SIGKILL to wandb-core alone (W&B's service gone; train.py goes on)",
}


def launch(tmp, out):
    return subprocess.Popen([sys.executable, str(TRAIN), *FLAGS, f"--output_dir={out}"], cwd=tmp,
                            env=clean_env(tmp, WANDB_MODE="offline", WANDB_SILENT="true"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wandb_core(proc):
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "wandb-core" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            pass
    return None


def written_since(path, moment):
    try:
        return path.stat().st_mtime >= moment
    except FileNotFoundError:
        return False


def wait_until(proc, condition, seconds=600):
    """Poll until condition() or the attempt ends; -> whether the condition came first."""
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False


def interrupt(proc, how, out, started, delay, rng):
    """Interrupt the attempt as `how` says, after `delay` seconds; -> the signals train.py was sent ([] when the
    attempt ended before the moment came)."""
    if how == "job SIGKILL after summary.json":
        if not wait_until(proc, lambda: written_since(out / runfiles.SUMMARY, started)):
            return []
        core = wandb_core(proc)
        proc.kill()
        if core:
            core.kill()
        return [signal.SIGKILL]
    try:
        proc.wait(timeout=delay)
        return []
    except subprocess.TimeoutExpired:
        pass
    core = wandb_core(proc)
    if how == "wandb-core SIGKILL":
        if core:
            core.kill()
        return ["wandb-core"] if core else []
    if how == "SIGKILL":
        proc.kill()
        return [signal.SIGKILL]
    moment = time.time()
    proc.send_signal(signal.SIGTERM)
    if how == "job SIGTERM" and core:
        core.send_signal(signal.SIGTERM)
    if how == "SIGTERM+SIGKILL":  # during the checkpoint write, which starts after the current update
        time.sleep(rng.uniform(0, 1.5))
        proc.kill()
        return [signal.SIGTERM, signal.SIGKILL]
    if how == "job SIGKILL after the checkpoint":
        if wait_until(proc, lambda: written_since(out / "checkpoint" / "progress.json", moment)):
            proc.kill()
            if core:
                core.kill()
            return [signal.SIGTERM, signal.SIGKILL]
    return [signal.SIGTERM]


def check_files(out):
    """-> what is wrong with the folder after an attempt, or ""."""
    updates = [h["update"] for h in runfiles.read_history(out / runfiles.HISTORY)]
    if updates != POINTS[:len(updates)]:
        return f"history.csv has points {updates}"
    summary = runfiles.read_json(out / runfiles.SUMMARY)
    if summary and summary["status"] == "preempted" and updates and summary["update"] < updates[-1]:
        return f"summary says update {summary['update']} but history reaches {updates[-1]}"
    if summary and summary["status"] == "finished" and updates != POINTS:
        return f"finished with points {updates}"
    return ""


def check_exit(code, sent, out, started):
    """-> what is wrong with the attempt's exit code, or "": a status it wrote has its exit code; a signal's
    default action may end it only before it wrote one."""
    summary = runfiles.read_json(out / runfiles.SUMMARY) or {}
    wrote = written_since(out / runfiles.SUMMARY, started)
    if code < 0:
        if -code not in sent:
            return f"exit {code}, though sent {sent}"
        if wrote and -code != signal.SIGKILL:
            return f"exit {code} after writing summary.json ({summary.get('status')})"
        return ""
    expected = STATUS_EXIT.get(summary.get("status"), "?") if wrote else 0  # not written: nothing to do
    return "" if code == expected else f"exit {code} with summary.json {summary.get('status')} (written: {wrote})"


def wandb_records(segment, tally):
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(segment)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        fail(tally, "wandb", f"{segment.name} unreadable: {out.stderr.strip()[:300]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def same(recorded, value):
    if isinstance(value, float) and math.isnan(value):
        return recorded is None or (isinstance(recorded, float) and math.isnan(recorded))
    if isinstance(recorded, dict) and len(recorded) == 1 and set(recorded) <= {"max", "min"}:
        recorded = next(iter(recorded.values()))  # define_metric's summary of val/acc and val/loss
    return recorded == value


def check_wandb(tmp, out, tally):
    """-> what differs between W&B's record of the run and its files: history, summary, end."""
    summary = runfiles.read_json(out / runfiles.SUMMARY)
    run_id = Path(summary["wandb_run_dir"]).name.rsplit("-", 1)[1]
    segments = []
    for segment in sorted(Path(tmp, "wandb").glob(f"offline-run-*-{run_id}")):
        if any(segment.glob("*.wandb")):
            segments.append(segment)
        else:  # killed inside wandb.init, before W&B wrote anything: nothing to read
            tally["empty segments"] += 1
    rows, last_summary, exit_code = {}, {}, None
    for segment in segments:
        last_summary, exit_code = {}, None
        for record in wandb_records(segment, tally):
            if record["type"] == "history" and "update" in record["history"]["item"]:
                rows[record["history"]["item"]["update"]] = record["history"]["item"]
            elif record["type"] == "summary":
                last_summary.update(record["summary"].get("update", {}))
                for key in record["summary"].get("remove", []):
                    last_summary.pop(key, None)
            elif record["type"] == "exit":
                exit_code = record["exit"].get("exit_code", 0)
    problems = []
    history = runfiles.read_history(out / runfiles.HISTORY)
    if sorted(rows) != [h["update"] for h in history]:
        problems.append(f"W&B's history has points {sorted(rows)}, history.csv {[h['update'] for h in history]}")
    else:
        wrong = [(h["update"], k) for h in history for k, v in h.items() if not same(rows[h["update"]].get(k), v)]
        if wrong:
            problems.append(f"W&B's history differs from history.csv at (update, key) {wrong[:5]}")
    if not segments or Path(summary["wandb_run_dir"]) != segments[-1]:
        problems.append(f"summary.json names {summary['wandb_run_dir']}, the last W&B run folder is "
                        f"{segments[-1] if segments else None}")
    wrong = {k: (last_summary.get(k), v) for k, v in summary.items()
             if k != "wandb_run_dir" and not same(last_summary.get(k), v)}
    if wrong:
        problems.append(f"W&B's summary differs from summary.json (W&B, file): {str(wrong)[:400]}")
    if exit_code != 0:
        problems.append(f"W&B's run ended with exit code {exit_code}")
    return "; ".join(problems)


def check_leftovers(out):
    names = sorted(p.name for p in out.iterdir())
    if names != FINAL_FILES:
        return f"the finished folder holds {names}"
    if "data/samples_per_rank" not in runfiles.read_json(out / runfiles.SUMMARY):
        return "summary.json lacks data/samples_per_rank"
    return ""


def fail(tally, kind, text):
    tally["failures"].append((kind, text))
    print(f"FAILURE {kind}: {text}", flush=True)


def cycle(tmp, out, duration, rng, tally):
    """Interrupt the same command until it finishes; -> its summary."""
    while True:
        started = time.time()
        proc = launch(tmp, out)
        how = rng.choice(list(KILLS))
        sent = interrupt(proc, how, out, started, rng.uniform(0, duration * 1.2), rng)
        proc.wait()
        if sent:
            tally["interruptions"] += 1
            tally["kills"][how] += 1
        err = proc.stderr.read()
        if "Traceback" in err:
            fail(tally, "traceback", out.name + ": " + err.strip().splitlines()[-1])
        for kind, problem in (("files", check_files(out)),
                              ("exit", check_exit(proc.returncode, [s for s in sent if s != "wandb-core"], out,
                                                  started))):
            if problem:
                fail(tally, kind, f"{out.name} after {how if sent else 'no interruption'}: {problem}")
        summary = runfiles.read_json(out / runfiles.SUMMARY) or {}
        if proc.returncode == 0 and summary.get("status") == runfiles.FINISHED:
            return summary


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interruptions", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="of the kill moments and ways")
    add_write_flag(p)
    args = p.parse_args()
    rng = random.Random(args.seed)
    tally = {"interruptions": 0, "kills": Counter(), "failures": [], "runs": 0, "empty segments": 0}
    tmp = tempfile.mkdtemp(prefix="soak-")  # kept when something failed, to look at
    start = time.perf_counter()
    proc = launch(tmp, Path(tmp) / "reference")
    assert proc.wait() == 0, proc.stderr.read()
    duration = time.perf_counter() - start
    reference = runfiles.read_json(Path(tmp) / "reference" / runfiles.SUMMARY)
    while tally["interruptions"] < args.interruptions:
        out = Path(tmp) / f"soak{tally['runs']}"
        summary = cycle(tmp, out, duration, rng, tally)
        tally["runs"] += 1
        differ = [k for k in METRICS if summary[k] != reference[k]]
        if differ:
            fail(tally, "metrics", f"{out.name}: {', '.join(differ)} differ from the reference")
        for kind, problem in (("wandb", check_wandb(tmp, out, tally)), ("leftovers", check_leftovers(out))):
            if problem:
                fail(tally, kind, f"{out.name}: {problem}")
        print(f"run {tally['runs']}: {tally['interruptions']} interruptions so far, "
              f"{len(tally['failures'])} failures", flush=True)
    if tally["failures"]:
        print(f"the runs are kept in {tmp}", flush=True)
    else:
        shutil.rmtree(tmp)

    def count(kind):
        return sum(k == kind for k, _ in tally["failures"])

    kills = "\n".join(f"| {how} | {KILLS[how]} | {tally['kills'][how]} |" for how in KILLS)
    body = f"""An uninterrupted run of `train.py {' '.join(FLAGS)}` (W&B offline) took {duration:.1f} s. Then
{tally['runs']} runs of the same command were interrupted {tally['interruptions']} times at uniformly random
moments, each followed by the same command again:

| interruption | what | times |
|---|---|---|
{kills}

{tally['empty segments']} W&B run folders had no .wandb file (the attempt was killed inside `wandb.init`, before
anything was logged); they are counted as empty.

| check | failures |
|---|---|
| history.csv after every attempt: points in order, none twice, none missing; summary.json agrees | {count('files')} |
| the exit code of every attempt agrees with the status it wrote | {count('exit')} |
| a traceback on stderr | {count('traceback')} |
| final test/acc, test/loss, val/loss_final, train/loss equal to the uninterrupted run's | {count('metrics')} |
| W&B's record equals the files: history value by value, summary key by key, ended with exit code 0 | {count('wandb')} |
| a finished folder holds its four files, nothing else; summary.json has data/samples_per_rank | {count('leftovers')} |
"""
    if tally["failures"]:
        body += "\nFailures:\n\n" + "\n".join(f"- {kind}: {text}" for kind, text in tally["failures"]) + "\n"
    report(args, "Kill-and-resume soak (bench/soak.py)", body)


if __name__ == "__main__":
    main()
