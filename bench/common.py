"""Helpers the benchmarks share: run train.py as a user would, read what it wrote, and write RESULTS.md sections."""

import csv
import json
import os
import platform
import re
import site
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "train.py"
RESULTS = ROOT / "bench" / "RESULTS.md"
# glibc's settings that train.py's --keep_freed_memory (on by default, CPU runs) makes with mallopt, given to a plain
# loop or timm's train.py through the environment: what part of a lead is the allocator's
SAME_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
LOAD_AT_START = os.getloadavg()[0]  # above ~0.5, something else was busy: CPU timings are then worthless


def clean_env(home, **extra):
    """A fresh machine's environment: no W&B key or mode, HOME (and so ~/.netrc) inside a temp folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.setdefault("PYTHONUSERBASE", site.getuserbase())  # packages in ~/.local stay found under the new HOME
    return {**env, "HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}


def run(argv, cwd, env, timeout=1800):
    """Run a command; -> (wall seconds, stdout). Raises with the command's last lines when it fails."""
    start = time.perf_counter()
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-5:])
        raise RuntimeError(f"exit {p.returncode}: {' '.join(map(str, argv))}\n{tail}")
    return wall, p.stdout


def train_run(flags, tmp, wandb_mode="disabled", timeout=1800):
    """One `python train.py --output_dir=<tmp>/out FLAGS` from the temp folder tmp.

    -> dict: wall (s, interpreter start to exit), history (rows of history.csv), summary, config."""
    out = Path(tmp) / "out"
    env = clean_env(tmp, WANDB_MODE=wandb_mode, WANDB_SILENT="true")
    wall, _ = run([sys.executable, str(TRAIN), f"--output_dir={out}", *flags], cwd=tmp, env=env, timeout=timeout)
    with (out / "history.csv").open(newline="") as f:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return {"wall": wall, "history": history, "summary": json.loads((out / "summary.json").read_text()),
            "config": json.loads((out / "config.json").read_text())}


def steady(values):
    """Median over epochs 2..E: epoch 1 is warm-up (allocator, cuDNN, first-touch of the data)."""
    return statistics.median(values[1:] if len(values) > 1 else values)


def train_img_s(history):
    return steady([row["throughput/train_img_s"] for row in history])


def machine(device="cpu"):
    import torch
    where = torch.cuda.get_device_name() if device == "cuda" else f"{os.cpu_count()} CPU cores"
    return f"{where}, {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}"


def command_line():
    """This benchmark's own command, as run, for the provenance line of its section."""
    return " ".join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def add_write_flag(parser):
    parser.add_argument("--write", nargs="?", const=str(RESULTS), default="", metavar="FILE",
                        help=f"replace this benchmark's section in FILE (default {RESULTS.relative_to(ROOT)})")


def write_section(path, title, body):
    """Replace the section `## title` of a markdown file (up to the next `## `), keeping every other one."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def report(args, title, body, device="cpu"):
    """Print a section, with the machine and command it came from; with --write, also put it in the file."""
    body = (f"Machine: {machine(device)}; 1-minute load average {LOAD_AT_START:.1f} before the start. "
            f"Command: `{command_line()}` ({time.strftime('%Y-%m-%d')}).\n\n" + body.strip())
    print(f"## {title}\n\n{body}\n", flush=True)
    if args.write:
        write_section(args.write, title, body)
        print(f"written to {args.write}")
