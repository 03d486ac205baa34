"""Soak test: kill train.py at random moments, run the same command again, and check nothing is lost or mixed.

    python bench/soak.py [--interruptions 50] [--seed 0] [--write]

Each cycle starts a fresh output folder and runs one command (W&B offline) until it finishes; every attempt
is interrupted at a random moment of its life with SIGKILL, SIGTERM, or SIGTERM followed by SIGKILL while
the checkpoint is being written, then the same command runs again. After every attempt:
- history.csv holds the evaluation points 1..k of the schedule, each once, in order (no duplicate, no gap);
- a summary.json agrees with it (a preempted one stops at or after its last point);
When the run ends: its test metrics equal an uninterrupted run's bit for bit, and the W&B history of the run
(every offline segment of its run id, later segments replacing what an earlier one logged past its
checkpoint) equals history.csv. Any other outcome is counted as a failure and described.
"""

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, TRAIN, add_write_flag, clean_env, report

sys.path.insert(0, str(ROOT))
import runfiles  # noqa: E402

FLAGS = ["--train_samples=256", "--batch_size=32", "--epochs=3", "--evals_per_epoch=2", "--img_size=16"]
POINTS = [4 * k for k in range(1, 7)]  # 8 updates an epoch, a point every 4, 3 epochs
METRICS = ("test/acc", "test/loss", "val/loss_final", "train/loss")


def launch(tmp, out):
    return subprocess.Popen([sys.executable, str(TRAIN), *FLAGS, f"--output_dir={out}"], cwd=tmp,
                            env=clean_env(tmp, WANDB_MODE="offline", WANDB_SILENT="true"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def check_files(out):
    """-> a description of what is wrong with the folder after an attempt, or ""."""
    updates = [h["update"] for h in runfiles.read_history(out / runfiles.HISTORY)]
    if updates != POINTS[:len(updates)]:
        return f"history.csv has points {updates}"
    summary = runfiles.read_json(out / runfiles.SUMMARY)
    if summary and summary["status"] == "preempted" and updates and summary["update"] < updates[-1]:
        return f"summary says update {summary['update']} but history reaches {updates[-1]}"
    if summary and summary["status"] == "finished" and updates != POINTS:
        return f"finished with points {updates}"
    return ""


def wandb_history(tmp, run_id, tally):
    """update -> row over the offline segments of run_id, oldest first, later ones replacing earlier rows."""
    rows = {}
    for segment in sorted(Path(tmp, "wandb").glob(f"offline-run-*-{run_id}")):
        if not any(segment.glob("*.wandb")):  # killed inside wandb.init, before W&B wrote anything: nothing to read
            tally["empty segments"] += 1
            continue
        out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(segment)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            fail(tally, "wandb", f"{segment.name} unreadable: {out.stderr.strip()[:300]}")
        for record in map(json.loads, filter(str.strip, out.stdout.splitlines())):
            row = record["history"]["item"] if record.get("type") == "history" else {}
            if "update" in row:
                rows[row["update"]] = row
    return rows


def fail(tally, kind, text):
    tally["failures"].append((kind, text))
    print(f"FAILURE {kind}: {text}", flush=True)


def cycle(tmp, out, duration, rng, tally):
    """Interrupt the same command until it finishes; -> its summary."""
    while True:
        proc = launch(tmp, out)
        kill_at = rng.uniform(0, duration * 1.2)  # sometimes after it would have finished: then it simply ends
        try:
            proc.wait(timeout=kill_at)
        except subprocess.TimeoutExpired:
            how = rng.choice(["SIGKILL", "SIGTERM", "SIGTERM+SIGKILL"])
            proc.send_signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGTERM)
            if how == "SIGTERM+SIGKILL":  # during the checkpoint write, which starts after the current update
                time.sleep(rng.uniform(0, 1.5))
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            tally["interruptions"] += 1
            tally[how] += 1
        err = proc.stderr.read()
        if "Traceback" in err:
            fail(tally, "traceback", out.name + ": " + err.strip().splitlines()[-1])
        problem = check_files(out)
        if problem:
            fail(tally, "files", f"{out.name}: {problem}")
        summary = runfiles.read_json(out / runfiles.SUMMARY) or {}
        if proc.returncode == 0 and summary.get("status") == runfiles.FINISHED:
            return summary


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interruptions", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="of the kill moments")
    add_write_flag(p)
    args = p.parse_args()
    rng = random.Random(args.seed)
    tally = {"interruptions": 0, "SIGKILL": 0, "SIGTERM": 0, "SIGTERM+SIGKILL": 0, "failures": [], "runs": 0,
             "empty segments": 0}
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
        logged = wandb_history(tmp, Path(summary["wandb_run_dir"]).name.rsplit("-", 1)[1], tally)
        history = {h["update"]: h for h in runfiles.read_history(out / runfiles.HISTORY)}
        same = all(logged.get(u, {}).get("val/loss") == h["val/loss"] for u, h in history.items())
        if sorted(logged) != sorted(history) or not same:
            fail(tally, "wandb", f"{out.name}: W&B history has points {sorted(logged)}, "
                                f"history.csv {sorted(history)}")
        print(f"run {tally['runs']}: {tally['interruptions']} interruptions so far, "
              f"{len(tally['failures'])} failures", flush=True)
    if tally["failures"]:
        print(f"the runs are kept in {tmp}", flush=True)
    else:
        shutil.rmtree(tmp)

    def count(kind):
        return sum(k == kind for k, _ in tally["failures"])

    body = f"""An uninterrupted run of `train.py {' '.join(FLAGS)}` (W&B offline) took {duration:.1f} s. Then
{tally['runs']} runs of the same command were interrupted {tally['interruptions']} times at uniformly random
moments ({tally['SIGKILL']} SIGKILL, {tally['SIGTERM']} SIGTERM, {tally['SIGTERM+SIGKILL']} SIGTERM then SIGKILL
within 1.5 s, which lands in the checkpoint write), each followed by the same command again.
{tally['empty segments']} W&B segments had no .wandb file (the attempt was killed inside `wandb.init`, before
anything was logged); they are counted as empty.

| check | failures |
|---|---|
| history.csv after every attempt: points in order, none twice, none missing; summary.json agrees | {count('files')} |
| a traceback on stderr | {count('traceback')} |
| final test/acc, test/loss, val/loss_final, train/loss equal to the uninterrupted run's | {count('metrics')} |
| the W&B history of the run id equals history.csv | {count('wandb')} |
"""
    if tally["failures"]:
        body += "\nFailures:\n\n" + "\n".join(f"- {kind}: {text}" for kind, text in tally["failures"]) + "\n"
    report(args, "Kill-and-resume soak (bench/soak.py)", body)


if __name__ == "__main__":
    main()
