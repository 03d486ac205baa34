"""Replay one committed run of each sweep with the current train.py, and say whether it trains the same, bit for bit.

    python lab1/replay.py --code CHECKOUT      # writes lab1/results/replay.csv (minutes on 2 cores)
    python lab1/replay.py --code CHECKOUT --sweeps lab1_lr     # only these sweeps (the CSV holds only them)

The lab's sweeps ran at different commits, and train.py grew between them (new instruments, a streaming data path):
the report may pool them only if what trains is the same. CHECKOUT is a clean checkout of the commit the newest
sweeps ran at (the train.py to replay with). For each sweep in lab1/results/ run at another commit, the cheapest
completed run (least time/train_s) is run again with CHECKOUT's train.py from its sweep file (sweeps/<sweep>.yaml
at the run's commit: its fixed values, and the row's value of each swept one), on this machine, with W&B off. One
CSV row per metric compared: sweep, run_id, commit (the run's), replayed_at (CHECKOUT's commit, from the replay's
config.json, which also says the checkout was clean), metric, then (the committed value), now (the replay's), same
(the two equal exactly: the same repr, so NaN is the same as NaN). The metrics are the ones training and evaluation
decide (losses, accuracies, update and example counts), never times or memory.
"""

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
import runfiles  # noqa: E402

SAME = ("update", "examples", "train/loss", "train/acc", "val/loss_final", "val/acc_final", "test/loss",
        "test/acc")
OUT = HERE / "results" / "replay.csv"


def cheapest(rows):
    done = [r for r in rows if r["status"] in runfiles.COMPLETED and isinstance(r.get("time/train_s"), float)]
    return min(done, key=lambda r: r["time/train_s"])


def command(sweep, row):
    """train.py's arguments for row: its sweep file's fixed values as they were at the run's commit, and for each
    swept key the grid value equal to the row's (the YAML's own spelling, so an int stays an int)."""
    text = subprocess.run(["git", "show", f"{row['git_commit']}:sweeps/{sweep}.yaml"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    args = []
    for key, spec in yaml.safe_load(text)["parameters"].items():
        if "value" in spec:
            value = spec["value"]
        else:
            value = next(v for v in spec["values"] if v == row[key])
        args.append(f"--{key}={str(value).lower() if isinstance(value, bool) else value}")
    return args


def replay(code, sweep, row, folder):
    args = command(sweep, row)
    subprocess.run([sys.executable, "train.py", *args, f"--output_dir={folder}", "--wandb_mode=disabled"],
                   cwd=code, check=True, capture_output=True)
    summary = runfiles.read_json(Path(folder) / runfiles.SUMMARY)
    config = runfiles.read_json(Path(folder) / runfiles.CONFIG)
    if config["git_dirty"]:
        sys.exit(f"replay.py: error: {code} has uncommitted changes: replay from a clean checkout")
    pairs = [(key, repr(row[key]), repr(summary.get(key))) for key in SAME if key in row]
    return [[sweep, row["run_id"], row["git_commit"], config["git_commit"], key, then, now, then == now]
            for key, then, now in pairs]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", type=Path, required=True, help="a clean checkout whose train.py replays the runs")
    p.add_argument("--sweeps", nargs="*", help="sweep names (default: every sweep run at another commit)")
    args = p.parse_args(argv)
    now = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.code, capture_output=True, text=True,
                         check=True).stdout.strip()
    out = []
    for path in sorted((HERE / "results").glob("lab1_*.csv")):
        if path.stem.endswith("_history") or (args.sweeps and path.stem not in args.sweeps):
            continue
        rows = runfiles.read_results(path)
        if all(r["git_commit"] == now for r in rows):
            continue
        row = cheapest(rows)
        with tempfile.TemporaryDirectory() as folder:
            out += replay(args.code, path.stem, row, folder)
        same = all(r[-1] for r in out if r[0] == path.stem)
        print(f"replay: {path.stem} {row['run_id']}: {'the same' if same else 'DIFFERENT'}", flush=True)
    with open(OUT, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(
            [["sweep", "run_id", "commit", "replayed_at", "metric", "then", "now", "same"]] + out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
