"""Benchmark: how much of a sweep's wall time is training, each run a new process against warm starts.

    python bench/sweep_overhead.py [--rounds 2] [--sweep sweeps/lab1_batch_size.yaml] [--write]

Two sweeps, each run both ways in one sitting, alternating which goes first, each in a temp folder with W&B
offline: sweeps/lab1_batch_size.yaml (30 runs of 3 epochs on digits) and a grid of 8 one-epoch tiny runs; then
the tiny grid warm with W&B disabled, which bounds what keeping one W&B service alive across runs could save.
`cold` is `sweep.py --cold_start` (each run a new `python train.py` process, as before warm starts and as
`wandb agent` does); `warm` is sweep.py's default (each run a fork of a process that has imported train.py's
modules). From each run's summary.json and the sweep's wall time (sweep.py's start to its exit):

- efficiency = sum of time/train_s / wall;
- overhead per run = (wall - sum of time/train_s) / runs: everything that is not time/train_s (imports, W&B,
  data, model, test evaluation, exit, the agent), the agent's own start and end spread over the runs;
- split into the agent's start and end, once a sweep, and the overhead of each run between one run's end and
  the next's (the agent prints a line as each run ends): that interval minus the run's time/train_s.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, TRAIN, add_write_flag, clean_env, report

LAB1 = ROOT / "sweeps" / "lab1_batch_size.yaml"
TINY = {"train_samples": 128, "epochs": 1, "batch_size": 32, "img_size": 16}  # about 1 s of training on 2 cores
RUN_LINE = re.compile(r"^(\w+)\s+\w+\s+exit=\S+ .*\(\d+ s\)")  # sweep.py's line as a run ends


def write_tiny_grid(path, runs=8, **extra):
    fixed = {**TINY, **extra}
    config = {"program": str(TRAIN), "method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
              "parameters": {"seed": {"values": list(range(runs))}, **{k: {"value": v} for k, v in fixed.items()}}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def sweep_once(sweep_file, cold):
    """One whole sweep in a fresh temp folder -> dict: wall, train (sum of time/train_s), runs, per_run (seconds
    of each run's interval, end to end, that is not its time/train_s; from the second run on)."""
    with tempfile.TemporaryDirectory() as tmp:
        sweep_dir = Path(tmp) / "sweep"
        argv = [sys.executable, str(ROOT / "sweep.py"), str(sweep_file), f"--sweep_dir={sweep_dir}"]
        start = time.perf_counter()
        # cwd: the repository, as a user runs it (lab1 files say program: train.py); W&B's files go to tmp
        agent = subprocess.Popen(argv + ["--cold_start"] * cold, cwd=ROOT, env=clean_env(tmp, WANDB_DIR=tmp),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ends = [(time.perf_counter(), m[1]) for line in agent.stdout if (m := RUN_LINE.match(line))]
        if agent.wait() != 0:
            raise RuntimeError(f"exit {agent.returncode}: {' '.join(argv)}")
        wall = time.perf_counter() - start
        summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}
    train_s = {run_id: summary["time/train_s"] for run_id, summary in summaries.items()}
    per_run = [b - a - train_s[run_id] for (a, _), (b, run_id) in zip(ends, ends[1:], strict=False)]
    # the runs' own evaluation (validation, test, precise BN) and start-up: inside each run's overhead, as train.py
    # times them
    evaluation = [s.get("time/eval_s", 0.0) + s.get("time/precise_bn_s", 0.0) for s in summaries.values()]
    return {"wall": wall, "train": sum(train_s.values()), "runs": len(train_s), "per_run": statistics.mean(per_run),
            "eval": statistics.mean(evaluation),
            "startup": statistics.mean(s["time/startup_s"] for s in summaries.values()),
            "eval_apart": all("time/eval_s" in summary for summary in summaries.values())}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="each sweep this many times each way, alternating")
    p.add_argument("--sweep", type=Path, default=LAB1, help="the real sweep to measure (default lab1_batch_size)")
    add_write_flag(p)
    args = p.parse_args()
    results = {}  # (sweep, way) -> [sweep_once's dict] over the rounds
    with tempfile.TemporaryDirectory() as tmp:
        sweeps = {args.sweep.name: args.sweep.resolve(), "8 one-epoch tiny runs": write_tiny_grid(Path(tmp) / "t.yaml"),
                  # what W&B costs a warm run: the most a W&B service kept alive across runs could save
                  "the same, W&B disabled": write_tiny_grid(Path(tmp) / "d.yaml", wandb_mode="disabled")}
        for i in range(args.rounds):
            for label, path in sweeps.items():
                ways = (True, False) if i % 2 == 0 else (False, True)
                for cold in ways if "disabled" not in label else (False,):
                    way = "cold" if cold else "warm"
                    r = sweep_once(path, cold)
                    results.setdefault((label, way), []).append(r)
                    print(f"round {i + 1} {label} {way}: {r['runs']} runs, wall {r['wall']:.1f} s, train "
                          f"{r['train']:.1f} s, efficiency {r['train'] / r['wall']:.3f}, per run {r['per_run']:.2f} s",
                          flush=True)
    report(args, "Sweep efficiency: a new process per run against warm starts", table(results))


def table(results):
    meaning = ("training steps only" if all(r["eval_apart"] for rounds in results.values() for r in rounds)
               else "the training loop with its per-epoch validation, without start-up and test evaluation")
    lines = ["efficiency = sum of the runs' time/train_s / the sweep's wall time (sweep.py's start to its exit). "
             f"time/train_s is train.py's at the time of the measurement: {meaning}. "
             "Overhead per run = (wall - sum of time/train_s) / runs, split into the agent's start and end (once "
             "a sweep) and each run's own (the interval from one run's end to the next's, less that run's "
             "time/train_s), and what train.py times inside it: its evaluation (time/eval_s + time/precise_bn_s: "
             "validation, test and precise BN, part of what the run measures) and its time/startup_s (process "
             "start, or fork, to the first training step; imports, data, model, W&B). cold = "
             "`sweep.py --cold_start`: a new `python train.py` process per run, the path before warm starts and "
             "what `wandb agent` does; warm = "
             "sweep.py's default. Medians over the rounds, run alternately in one sitting; each round's efficiency "
             "in the last column.", "",
             "| sweep | path | runs | wall (s) | sum of time/train_s (s) | efficiency | overhead per run (s) "
             "| of which the agent's start and end, once (s) | each run's own (s) | of which its evaluation (s) "
             "| of which its start-up (s) | each round's efficiency |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (label, way), rounds in results.items():
        wall, train = (statistics.median(r[k] for r in rounds) for k in ("wall", "train"))
        runs, per_run = rounds[0]["runs"], statistics.median(r["per_run"] for r in rounds)
        evaluation, startup = (statistics.median(r[k] for r in rounds) for k in ("eval", "startup"))
        each = " / ".join(f"{r['train'] / r['wall']:.3f}" for r in rounds)
        lines.append(f"| {label} | {way} | {runs} | {wall:.1f} | {train:.1f} | **{train / wall:.3f}** "
                     f"| {(wall - train) / runs:.2f} | {wall - train - runs * per_run:.1f} | {per_run:.2f} "
                     f"| {evaluation:.2f} | {startup:.2f} | {each} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
