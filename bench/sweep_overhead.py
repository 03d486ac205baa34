"""Benchmark: what sweep.py adds to each run, over running the same train.py command directly.

    python bench/sweep_overhead.py [--runs 4] [--write]

A grid of --runs tiny runs (seeds 0..N-1) goes through `python sweep.py` in a temp folder; the same train.py
commands then run directly, one after the other, W&B offline in both (sweep.py sets WANDB_MODE=offline per run).
Reported: wall time per run, its training part (time/train_s) and start-up (time/startup_s) from each run's
summary.json, and the difference per run between the sweep and the direct runs. sweep.py's own start-up (it
imports train.py to check every grid point's flags) is shown apart, from `sweep.py --dry_run`.
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from common import ROOT, TRAIN, add_write_flag, clean_env, report, run, train_run

TINY = {"train_samples": 128, "epochs": 1, "batch_size": 32, "img_size": 16}  # about 1 s of training on 2 cores


def write_sweep(path, runs):
    """A grid over seed with the tiny settings; program is this checkout's train.py (sweep.py runs from a temp cwd)."""
    config = {"program": str(TRAIN), "method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
              "parameters": {"seed": {"values": list(range(runs))}, **{k: {"value": v} for k, v in TINY.items()}}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def via_sweep(runs, tmp):
    """-> (wall of `sweep.py --dry_run`, wall of the whole sweep, each run's summary)."""
    sweep_file, sweep_dir = Path(tmp) / "bench.yaml", Path(tmp) / "sweep"
    write_sweep(sweep_file, runs)
    argv = [sys.executable, str(ROOT / "sweep.py"), str(sweep_file), f"--sweep_dir={sweep_dir}"]
    dry, _ = run([*argv, "--dry_run"], cwd=tmp, env=clean_env(tmp))
    wall, _ = run(argv, cwd=tmp, env=clean_env(tmp))
    summaries = [json.loads(f.read_text()) for f in sweep_dir.glob("*/summary.json")]
    if len(summaries) != runs:
        raise RuntimeError(f"the sweep wrote {len(summaries)} summary.json files, expected {runs}")
    return dry, wall, summaries


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=4, help="grid points (seeds)")
    add_write_flag(p)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dry, sweep_wall, swept = via_sweep(args.runs, tmp)
    print(f"sweep: {sweep_wall:.1f} s for {args.runs} runs (dry run {dry:.1f} s)", flush=True)
    direct = []
    for seed in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            direct.append(train_run([f"--{k}={v}" for k, v in TINY.items()] + [f"--seed={seed}"], tmp, "offline"))
        print(f"direct run {seed + 1}/{args.runs}: {direct[-1]['wall']:.1f} s", flush=True)

    def row(label, wall_per_run, summaries):
        train_s = statistics.mean(s["time/train_s"] for s in summaries)
        startup_s = statistics.mean(s["time/startup_s"] for s in summaries)
        return f"| {label} | {len(summaries)} | {wall_per_run:.2f} | {train_s:.2f} | {startup_s:.2f} " \
               f"| {wall_per_run - train_s:.2f} |"

    direct_wall = statistics.mean(d["wall"] for d in direct)
    body = "\n".join([
        f"{args.runs} runs of `train.py {' '.join(f'--{k}={v}' for k, v in TINY.items())} --seed=S`, W&B offline. "
        "Seconds per run, means over the runs; wall is process start to exit (for the sweep: its whole wall / runs).",
        "",
        "| how | runs | wall per run | time/train_s | time/startup_s | wall - train_s |",
        "|---|---|---|---|---|---|",
        row("train.py directly", direct_wall, [d["summary"] for d in direct]),
        row("through sweep.py", sweep_wall / args.runs, swept),
        f"| **sweep.py adds per run** | | {sweep_wall / args.runs - direct_wall:.2f} | | | |",
        f"| of which its own start-up, once a sweep (`sweep.py --dry_run`), per run | | {dry / args.runs:.2f} "
        "| | | |",
    ])
    report(args, "Sweep overhead: sweep.py against direct train.py runs", body)


if __name__ == "__main__":
    main()
