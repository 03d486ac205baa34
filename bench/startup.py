"""Benchmark: train.py's start-up (process start to the first training epoch) against its bare imports.

    python bench/startup.py [--repeats 3] [--write]

train.py's time/startup_s counts from its first line (interpreter start excluded) to the start of the first
epoch: imports, data, model, Accelerate and W&B init. The bare `import torch, timm, accelerate, wandb` is timed the
same way inside a child process. Each round runs, alternately and each as a fresh process: the bare imports,
train.py with W&B offline (temp HOME and cwd, so no key is found), train.py with --wandb_mode=disabled, and, for
information, the extra cost of sklearn's imports and of train.py's own module imports on top of the bare four.
"Our own start-up" = train.py offline - bare imports, against the goal <= 1.5 s.
"""

import argparse
import statistics
import sys
import tempfile

from common import ROOT, add_write_flag, clean_env, report, run, train_run

GOAL_S = 1.5  # seconds of start-up beyond the bare imports
BARE = "import torch, timm, accelerate, wandb"
# label -> (statement run first, statement timed): each timed in a fresh interpreter, after `import time`
IMPORTS = {
    "bare imports: torch, timm, accelerate, wandb": ("pass", BARE),
    "import sklearn.datasets, after the bare four": (BARE, "import sklearn.datasets"),
    "from sklearn.model_selection import train_test_split, after those": (
        f"{BARE}; import sklearn.datasets", "from sklearn.model_selection import train_test_split"),
    "import train (its module-level imports), after the bare four": (
        f"{BARE}; import sys; sys.path.insert(0, {str(ROOT)!r})", "import train"),
}
STARTUP = "train.py time/startup_s, W&B {}"
TRAIN_FLAGS = ["--epochs=1"]  # start-up does not depend on the number of epochs; one keeps the round short


def time_import(first, timed, tmp):
    code = f"import time; {first}; t = time.perf_counter(); {timed}; print(time.perf_counter() - t)"
    return float(run([sys.executable, "-c", code], cwd=tmp, env=clean_env(tmp))[1].split()[-1])


def one_round():
    """-> {label: seconds} from one fresh process each."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (first, timed) in IMPORTS.items():
            out[label] = time_import(first, timed, tmp)
    for mode in ("offline", "disabled"):
        with tempfile.TemporaryDirectory() as tmp:
            out[STARTUP.format(mode)] = train_run(TRAIN_FLAGS, tmp, mode)["summary"]["time/startup_s"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="rounds; each measures everything once")
    add_write_flag(p)
    args = p.parse_args()
    rounds = []
    for r in range(args.repeats):
        rounds.append(one_round())
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{v:.2f}" for v in rounds[-1].values()), flush=True)
    samples = {label: [x[label] for x in rounds] for label in rounds[0]}
    med = {label: statistics.median(v) for label, v in samples.items()}
    bare, offline, disabled = list(IMPORTS)[0], *(STARTUP.format(mode) for mode in ("offline", "disabled"))

    def row(label, goal=""):
        v = samples[label]
        return f"| {label} | {len(v)} | {med[label]:.2f} | {min(v):.2f} | {max(v):.2f} | {goal} |"

    own = med[offline] - med[bare]
    rows = [row(bare), row(offline), row(disabled),
            f"| W&B init: offline - disabled | | {med[offline] - med[disabled]:.2f} | | | |",
            f"| **our own start-up: train.py offline - bare imports** | | {own:.2f} | | "
            f"| <= {GOAL_S} ({own / GOAL_S:.2f} of it) |",
            "| *for information:* | | | | | |",
            *(row(label) for label in list(IMPORTS)[1:])]
    body = "\n".join([
        f"Seconds, interpreter start excluded; train.py with `{' '.join(TRAIN_FLAGS)}` and otherwise its defaults; "
        f"each row a fresh process, {args.repeats} alternating rounds.",
        "",
        "| measure | runs | median (s) | min | max | goal |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    report(args, "Start-up: train.py to its first training epoch", body)


if __name__ == "__main__":
    main()
