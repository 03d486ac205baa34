"""Benchmark: how long sweep.py takes to propose runs as a grid grows, this checkout against another commit.

    python bench/sweep_scale.py [--vs e9b8a82] [--sizes 100,200,400,800,2000,10000] [--timeout 240] [--write]

A grid sweep of N points (seed x 4 lr values), each measurement in a process of its own that imports one version's
sweep.py and runfiles.py (`--vs`: taken from that commit with git archive), side by side, smallest grid first:

- plan: `sweep.propose(config, [], inf)`, every point of a fresh grid: what `--dry_run` and an agent's start ask
  of the engine;
- next run: `sweep.next_run(...)`, an agent's next proposal (take the lock, read results.csv and the claims, ask
  the engine, claim the run) when half the grid has a row in results.csv (written from the engine's own grid),
  twice in one process: the first, and a later one (an agent proposes many; it may keep what it computed);
- dry run: `python sweep.py FILE --dry_run` end to end, with the program tests/light/train.py (sweep.py's own cost:
  its imports, the plan, the flag check of every point, the listing) and with train.py (what a user waits for:
  the check then parses every point's flags with train.py's parse_args).

A version that takes longer than --timeout at one size is not run at larger ones (nor its dry runs, which make
the plan too, at the size whose plan took longer).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, add_write_flag, clean_env, report

LIGHT = ROOT / "tests" / "light" / "train.py"
LRS = [0.1, 0.01, 0.001, 0.2]


def write_grid(path, points, program):
    config = {"program": str(program), "method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
              "parameters": {"seed": {"values": list(range(points // len(LRS)))}, "lr": {"values": LRS},
                             "epochs": {"value": 1}}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def measure(kind, code, points, tmp):
    """In this process, with the sweep.py of folder `code`: -> {plan_s} or {next_run_s, later_run_s}."""
    sys.path[0] = str(code)
    import sweeps

    import sweep

    config = sweep.load_sweep(write_grid(Path(tmp) / "grid.yaml", points, LIGHT))
    if kind == "plan":
        start = time.perf_counter()
        plan = sweep.propose(config, [], math.inf)
        assert len(plan) == points
        return {"plan_s": time.perf_counter() - start}
    grid = [{k: v["value"] for k, v in run.config.items()} for run in sweeps.next_runs(config, [], n=points)]
    sweep_dir = Path(tmp) / "sweep"
    sweep_dir.mkdir()
    taken = [sweep.Run(f"r{i}", params, "finished", 0, {"val/acc": 0.5}) for i, params in enumerate(grid[::2])]
    sweep.write_results(sweep_dir / "results.csv", taken, list(config["parameters"]))
    seconds, runs = [], []  # the runs stay claimed, as an agent's running runs do
    for _ in range(2):
        start = time.perf_counter()
        runs.append(sweep.next_run(config, sweep_dir, True)[0])
        seconds.append(time.perf_counter() - start)
    assert [run.params for run in runs] == [grid[1], grid[3]]
    return {"next_run_s": seconds[0], "later_run_s": seconds[1]}


def version(commit, tmp):
    """A folder holding the top-level modules of a commit: sweep.py, and the train.py its flag check imports."""
    folder = Path(tmp) / commit
    folder.mkdir()
    modules = subprocess.run(["git", "ls-tree", "--name-only", commit, "*.py"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    archive = subprocess.run(["git", "archive", commit, *modules], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def timed(argv, timeout, **kwargs):
    """-> (seconds or None past timeout, stdout)."""
    start = time.perf_counter()
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        return None, ""
    if res.returncode != 0:
        raise RuntimeError(f"exit {res.returncode}: {' '.join(map(str, argv))}\n{res.stderr[-2000:]}")
    return time.perf_counter() - start, res.stdout


def in_process(kind, code, points, timeout):
    with tempfile.TemporaryDirectory() as tmp:
        seconds, out = timed([sys.executable, __file__, "--measure", kind, "--code", str(code), "--size", str(points),
                              "--tmp", tmp], timeout, cwd=ROOT / "bench")
    if seconds is None:
        return {"plan_s": None} if kind == "plan" else {"next_run_s": None, "later_run_s": None}
    return json.loads(out.splitlines()[-1])


def dry_run(code, points, program, timeout):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_grid(Path(tmp) / "grid.yaml", points, program)
        env = clean_env(tmp, WANDB_MODE="disabled")
        seconds, out = timed([sys.executable, str(Path(code) / "sweep.py"), str(path), "--dry_run",
                              f"--sweep_dir={tmp}/sweep"], timeout, cwd=ROOT, env=env)
    assert seconds is None or len(out.splitlines()) == points
    return seconds


def show(seconds, timeout):
    return f"> {timeout:.0f}" if seconds is None else f"{seconds:.2f}"


def ratio(old, new):
    return "" if old is None or new is None or new == 0 else f"{old / new:.0f}x"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vs", default="e9b8a82", help="the commit to compare with (default: before this benchmark)")
    p.add_argument("--sizes", default="100,200,400,800,2000,10000", help="grid points, comma-separated")
    p.add_argument("--timeout", type=float, default=240, help="seconds a measurement may take")
    p.add_argument("--measure", choices=("plan", "next_run"), help=argparse.SUPPRESS)  # internal: one measurement
    p.add_argument("--code", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    add_write_flag(p)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.code, args.size, args.tmp)))
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"old": version(args.vs, tmp), "new": ROOT}
        given_up = set()  # (version, measurement) that passed the timeout at a smaller size
        for points in sizes:
            row = {"points": points}
            for name, code in codes.items():
                for kind in ("plan", "next_run"):
                    if (name, kind) in given_up:
                        row.update({f"{name}_plan_s": None} if kind == "plan" else
                                   {f"{name}_next_run_s": None, f"{name}_later_run_s": None})
                        continue
                    row.update({f"{name}_{k}": v for k, v in in_process(kind, code, points, args.timeout).items()})
                    if row[f"{name}_{kind}_s"] is None:
                        given_up.add((name, kind))
                # each version's own train.py: the check imports it beside that version's runfiles.py
                for program, label in ((LIGHT, "light"), (Path(code) / "train.py", "train")):
                    key = f"{name}_dry_{label}_s"
                    skip = {(name, key), (name, "plan")} & given_up  # a dry run makes the plan, and more
                    row[key] = None if skip else dry_run(code, points, program, args.timeout)
                    if row[key] is None:
                        given_up.add((name, key))
                print(points, name, {k: v for k, v in row.items() if k.startswith(name)}, flush=True)
            rows.append(row)
    t = args.timeout
    lines = [f"Grid sweeps of N points (seed x 4 lr values); `old` is sweep.py at {args.vs}, `new` this checkout; "
             "seconds, each measurement a process of its own, one at a time. `> T`: not finished within the "
             "timeout (and not run at larger N).",
             "",
             "| grid points | plan, old | plan, new | ratio | first next run, old | first, new | later next run, "
             "old | later, new | ratio | dry run (light), old | (light), new | dry run (train.py), old | "
             "(train.py), new |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r['points']:,}", show(r["old_plan_s"], t), show(r["new_plan_s"], t),
                 ratio(r["old_plan_s"], r["new_plan_s"]), show(r["old_next_run_s"], t), show(r["new_next_run_s"], t),
                 show(r["old_later_run_s"], t), show(r["new_later_run_s"], t),
                 ratio(r["old_later_run_s"], r["new_later_run_s"]), show(r["old_dry_light_s"], t),
                 show(r["new_dry_light_s"], t), show(r["old_dry_train_s"], t), show(r["new_dry_train_s"], t)]
        lines.append("| " + " | ".join(cells) + " |")
    report(args, "Sweep scale: proposing runs as a grid grows (bench/sweep_scale.py)", "\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
