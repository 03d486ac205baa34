"""Benchmark: oneDNN's AMX kernels on a CPU bf16 run: how often a run ends with a NaN loss, and what they save.

    python bench/amx.py --write

Part 1, on a busy host (two busy loops beside it): the small bf16 point of sweeps/multi_gpu.yaml (SGD, lr 0.4,
64 digits, 4 updates), --runs times in one process per side, in chunks that alternate the sides. Without the
noise, a run is deterministic: it finishes with the same loss to the last bit, or it ends "diverged" (a NaN).
Sides: train.py's default (no AMX), AMX (ONEDNN_MAX_CPU_ISA=ALL, oneDNN's default), and with --pinned AMX
pinned to one core (the busy loops too). About 3 s a run on a busy 2-core host.
Part 2, quiet: a bf16 digits run each way, fresh processes in turn, for the speed AMX gives; and one fp32 run
each way, whose losses must be equal (fp32 uses no AMX).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from common import ROOT, add_write_flag, clean_env, report, train_img_s, train_run

POINT = ["--seed=0", "--batch_size=16", "--dataset=digits", "--download=False", "--model=resnet10t", "--img_size=16",
         "--epochs=1", "--optimizer=sgd", "--lr=0.4", "--momentum=0.9", "--weight_decay=0.0005",
         "--mixed_precision=bf16", "--train_samples=64", f"--config={ROOT / 'lab1/train_defaults.yaml'}",
         "--wandb_mode=disabled"]
SIDES = {"no AMX (train.py's default)": ({}, []),
         "AMX (ONEDNN_MAX_CPU_ISA=ALL)": ({"ONEDNN_MAX_CPU_ISA": "ALL"}, [])}
PINNED = {"AMX, pinned to one core": ({"ONEDNN_MAX_CPU_ISA": "ALL"}, ["taskset", "-c", "0"])}
MANY = "import json, sys, train\nfor argv in json.loads(sys.argv[1]):\n    train.main(argv)\n"


def busy(pin):
    """Two busy loops (on the pinned core, where the runs are pinned): a host someone else is using."""
    return [subprocess.Popen([*pin, sys.executable, "-c", "while True: pass"]) for _ in range(2)]


def endings(env, pin, runs, tmp):
    """-> Counter of (status, train/loss) over `runs` runs of POINT made one after another in one process."""
    argvs = [[*POINT, f"--output_dir={tmp}/r{i}"] for i in range(runs)]
    loops = busy(pin)
    try:
        subprocess.run([*pin, sys.executable, "-c", MANY, json.dumps(argvs)], cwd=tmp, check=True, timeout=1800,
                       env=clean_env(tmp, PYTHONPATH=str(ROOT), **env), capture_output=True)
    finally:
        for loop in loops:
            loop.kill()
    found = Counter()
    for i in range(runs):
        s = json.loads((Path(tmp) / f"r{i}" / "summary.json").read_text())
        found[s["status"], repr(s["train/loss"])] += 1
    return found


def speed(rounds, epochs):
    """-> {side: [(img/s, best val/acc, config), ...]} of bf16 digits runs in turn, and the fp32 test/loss of each
    side. summary.json's val/acc is the best evaluation point's, as in W&B's summary."""
    bf16, fp32 = {"no AMX": [], "AMX": []}, {}
    for round_ in range(rounds + 1):
        for side, env in (("no AMX", {}), ("AMX", {"ONEDNN_MAX_CPU_ISA": "ALL"})):
            precision = "fp32" if round_ == rounds else "bf16"
            os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
            os.environ.update(env)  # train_run's environment is this one's
            with tempfile.TemporaryDirectory() as tmp:
                r = train_run([f"--epochs={epochs}", f"--mixed_precision={'no' if precision == 'fp32' else 'bf16'}"],
                              tmp)
            if precision == "fp32":
                fp32[side] = r["summary"]["test/loss"]
            else:
                bf16[side].append((train_img_s(r["history"]), r["summary"]["val/acc"], r["config"]))
    os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
    return bf16, fp32


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=100, help="runs of the point per side, in chunks of 20")
    p.add_argument("--pinned", action="store_true", help="a third side: AMX, pinned to one core")
    p.add_argument("--rounds", type=int, default=2, help="bf16 digits runs per side for the speed")
    p.add_argument("--epochs", type=int, default=3, help="of each speed run; epoch 1 is warm-up and not counted")
    add_write_flag(p)
    args = p.parse_args()
    sides = {**SIDES, **(PINNED if args.pinned else {})}
    found = {side: Counter() for side in sides}
    for _ in range(0, args.runs, 20):
        for side, (env, pin) in sides.items():
            with tempfile.TemporaryDirectory() as tmp:
                found[side] += endings(env, pin, 20, tmp)
            print(side, dict(found[side]), flush=True)
    rows = [f"| {side} | {sum(c.values())} | {sum(n for (status, _), n in c.items() if status == 'diverged')} | "
            + ", ".join(f"{status} {loss} x{n}" for (status, loss), n in sorted(c.items())) + " |"
            for side, c in found.items()]
    bf16, fp32 = speed(args.rounds, args.epochs)
    img_s = {side: statistics.median(v[0] for v in runs) for side, runs in bf16.items()}
    isa = {side: runs[0][2]["onednn_max_cpu_isa"] for side, runs in bf16.items()}
    body = "\n".join([
        "Part 1, on a busy host (two busy loops beside the runs): the small bf16 point of sweeps/multi_gpu.yaml "
        "(SGD, lr 0.4, 64 digits, 4 updates), made one after another in one process, in chunks of 20 that "
        "alternate the sides.",
        "",
        "| side | runs | ended diverged (NaN loss) | endings: status, train/loss x runs |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Part 2, quiet: bf16 digits runs (train.py's defaults, {args.epochs} epochs), {args.rounds} a side in turn, "
        f"fresh processes. config.json's onednn_max_cpu_isa: {isa['no AMX']} and {isa['AMX']}.",
        "",
        "| side | img/s (median of epochs 2..E, then of runs) | best val/acc (summary.json's val/acc) |",
        "|---|---|---|",
        *(f"| {side} | {img_s[side]:.1f} | {', '.join(f'{v[1]:.4f}' for v in runs)} |" for side, runs in bf16.items()),
        "",
        f"No AMX against AMX: {img_s['no AMX'] / img_s['AMX']:.3f}x the speed. fp32 runs (train.py's default "
        f"precision), one a side: test/loss {fp32['no AMX']!r} and {fp32['AMX']!r}: "
        f"{'the same to the last bit' if fp32['no AMX'] == fp32['AMX'] else 'DIFFERENT'}.",
    ])
    report(args, "AMX: NaN losses in CPU bf16 runs, and the speed it gives (cpu)", body)


if __name__ == "__main__":
    sys.exit(main())
