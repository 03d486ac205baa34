"""Offline sweep agent: run a sweeps/*.yaml file with W&B's own sweep engine, without a W&B server.

    python sweep.py sweeps/lab1_lr.yaml                # every grid point, one run at a time (CPU)
    python sweep.py sweeps/lab1_lr.yaml --dry_run      # print the command lines that would run
    python sweep.py sweeps/bayes.yaml --count 10       # at most 10 new runs, then stop
    python sweep.py sweeps/bayes.yaml --gpus 0,1       # two runs at once, one per GPU

Online, the same files run with `wandb sweep sweeps/X.yaml` and then `wandb agent ENTITY/PROJECT/ID`.
Here the `sweeps` package (what the W&B server runs) picks the runs: `next_run` for grid, random and bayes,
`stop_runs` for hyperband. Each run is the YAML `command` expanded as `wandb agent` expands it, with one
addition, `--output_dir=<sweep_dir>/<run_id>`, and env WANDB_MODE=offline, WANDB_RUN_GROUP=<sweep name>,
WANDB_RUN_ID=<run_id>. `${interpreter}` is the Python running this script (wandb agent uses `python`).

State is runs/sweeps/<sweep name>/results.csv, one row per ended run, rewritten atomically after each.
Run the same command again after an interruption: ended runs are never repeated. A run stopped by SIGTERM or
Ctrl-C of this agent saves a checkpoint and gets a `preempted` row; the next invocation resumes it first, under
the same run id and folder. A run cut off harder (this agent SIGKILLed: the kernel then sends the run SIGTERM)
has no row, so the engine proposes its point again, as a new run (its folder stays, with no row pointing at it).
"""

import argparse
import csv
import ctypes
import importlib.util
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

warnings.filterwarnings("ignore", message="Valid config keys have changed in V2")  # sweeps' pydantic v1 config
import jsonschema
import sweeps
from wandb.sdk.launch.sweeps.utils import DEFAULT_SWEEP_COMMAND, create_sweep_command, create_sweep_command_args
from wandb.sdk.lib.runid import generate_id  # the 8-character id wandb.init would pick

POLL_S = 0.5  # seconds between checks of running runs (exit, and history.csv for hyperband)
KILL_GRACE_S = 30  # seconds between SIGTERM and SIGKILL, as wandb agent's kill delay
FIXED_COLUMNS = ["run_id", "status", "exit_code"]


class SweepError(Exception):
    """A bad sweep file or flag: main() prints it as one line and exits with code 2, before any run."""


@dataclass
class Run:
    run_id: str
    params: dict  # parameter name -> value, as the engine proposed it
    status: str = "running"  # then finished | early_stopped | diverged | oom | failed | stopped | preempted
    exit_code: int | None = None
    summary: dict = field(default_factory=dict)  # scalar summary.json entries
    proc: subprocess.Popen | None = None
    gpu: str | None = None
    started: float = 0.0  # time.monotonic() at launch
    stop_sent: float | None = None  # time.monotonic() of the SIGTERM, when hyperband stops it

    def sweep_run(self, sweep_dir):
        """This run as the engine sees it: its config, state, summary, and per-epoch history."""
        state = {"running": "running", "failed": "failed"}.get(self.status, "finished")
        return sweeps.SweepRun(name=self.run_id, state=state, config={k: {"value": v} for k, v in self.params.items()},
                               summary_metrics=self.summary, history=read_history(sweep_dir / self.run_id))


# ----------------------------------------------------------------------------------------------
# The sweep file: parsed, validated by W&B's schema, and checked against the program's own parser

def load_sweep(path):
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SweepError(str(e)) from None
    if not isinstance(raw, dict):
        raise SweepError("a sweep file is a mapping with program, method, metric and parameters")
    try:
        violations = sweeps.schema_violations_from_proposed_config(raw)
        config = sweeps.SweepConfig(raw) if not violations else None
    except (ValueError, jsonschema.ValidationError) as e:
        violations = [e.args[0] if e.args else str(e)]
    if violations:
        raise SweepError("not a valid W&B sweep: " + "; ".join(violations))
    if config["method"] not in ("grid", "random", "bayes"):
        raise SweepError(f"method {config['method']!r}: the sweeps engine offers grid, random and bayes")
    if not Path(config.get("program", "")).is_file():
        raise SweepError(f"program {config.get('program')!r} not found (paths are relative to where you run this)")
    return config


def check_program_accepts(config, points):
    """Parse each point's flags with the program's own parse_args, so a bad parameter stops the sweep now."""
    program = Path(config["program"])
    if program.suffix != ".py":
        return
    sys.path.insert(0, str(program.resolve().parent))  # as when run as a script: it may import its neighbours
    spec = importlib.util.spec_from_file_location(program.stem, program)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # train.py does nothing heavy at import time
    if not hasattr(module, "parse_args"):
        return
    for params in points:
        argv = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})["args"]
        try:
            module.parse_args(argv)
        except (getattr(module, "ConfigError", ValueError), SystemExit) as e:
            raise SweepError(f"{program} rejects `{shlex.join(argv)}`: {e}") from None


def propose(config, runs, n):
    """Up to n parameter points from the engine; proposals so far count as pending runs, so none repeats."""
    pending = []
    while len(pending) < n:
        run = sweeps.next_run(config, runs + pending)
        if run is None:  # grid exhausted
            break
        run.state = sweeps.RunState.pending
        pending.append(run)
    return [{k: v["value"] for k, v in run.config.items()} for run in pending]


def command_line(config, params, run_dir):
    """The argv `wandb agent` builds for these parameters, plus --output_dir."""
    args = {k: {"value": v} for k, v in params.items()} | {"output_dir": {"value": str(run_dir)}}
    macros = create_sweep_command_args({"args": args})
    macros.update(env=["/usr/bin/env"], interpreter=[sys.executable], program=[config["program"]])
    argv = []
    for chunk in create_sweep_command(list(config.get("command") or DEFAULT_SWEEP_COMMAND)):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += macros.get(chunk[2:-1]) or []  # an unknown macro expands to nothing, as in wandb agent
        else:
            argv.append(chunk)
    return argv


# ----------------------------------------------------------------------------------------------
# Files: results.csv (the sweep's state), and each run's history.csv and summary.json

def parse_cell(text):
    """A results.csv cell back to the value written: '16' -> 16, '1e-05' -> 1e-05, 'True' -> True."""
    if text in ("True", "False"):
        return text == "True"
    for parse in (json.loads, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def read_results(path, param_names):
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    runs = []
    for row in rows:
        values = {k: parse_cell(v) for k, v in row.items() if v != ""}
        runs.append(Run(row["run_id"], {k: values[k] for k in param_names if k in values}, row["status"],
                        values.get("exit_code"),
                        {k: v for k, v in values.items() if k not in param_names and k not in FIXED_COLUMNS}))
    return runs


def write_results(path, runs, param_names):
    metrics = sorted({k for run in runs for k in run.summary})
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIXED_COLUMNS + list(param_names) + metrics, restval="")
        writer.writeheader()
        for run in runs:
            writer.writerow({"run_id": run.run_id, "status": run.status, "exit_code": run.exit_code,
                             **run.params, **run.summary})
    os.replace(tmp, path)  # an interruption leaves the old table or the new one, never half of one


def read_history(run_dir):
    try:
        with (run_dir / "history.csv").open(newline="") as f:
            return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]
    except (OSError, ValueError):
        return []  # not started yet, or a row being written: read it again at the next poll


# ----------------------------------------------------------------------------------------------
# Running: launch, poll, stop, record

def die_with_parent():
    """In the child, before exec: if this agent dies, even by SIGKILL, the kernel sends the run SIGTERM."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def launch(config, run, sweep_dir, name):
    run_dir = sweep_dir / run.run_id
    run_dir.mkdir(parents=True, exist_ok=True)  # exists when a preempted run is resumed
    env = dict(os.environ, WANDB_MODE="offline", WANDB_RUN_GROUP=name, WANDB_RUN_ID=run.run_id,
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))  # `accelerate`
    if run.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = run.gpu
    with (run_dir / "train.log").open("ab") as log:  # the run's own output; the terminal gets one line per run
        run.proc = subprocess.Popen(command_line(config, run.params, run_dir), env=env, stdout=log,
                                    stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
                                    start_new_session=True)  # its own process group: signals reach accelerate's workers
    run.started = time.monotonic()


def signal_group(run, sig):
    try:
        os.killpg(run.proc.pid, sig)
    except ProcessLookupError:
        pass


def stop_poor_runs(config, ended, running, sweep_dir):
    """Hyperband: ask the engine which running runs to stop, from every run's history.csv."""
    by_id = {run.run_id: run for run in running}
    for sweep_run in sweeps.stop_runs(config, [run.sweep_run(sweep_dir) for run in ended + running]):
        run = by_id[sweep_run.name]
        if run.stop_sent is None:
            run.stop_sent = time.monotonic()
            signal_group(run, signal.SIGTERM)
    for run in running:
        if run.stop_sent is not None and time.monotonic() - run.stop_sent > KILL_GRACE_S:
            signal_group(run, signal.SIGKILL)


def record(run, sweep_dir):
    """Status and metrics of a run whose process has ended."""
    run.exit_code = run.proc.returncode
    try:
        summary = json.loads((sweep_dir / run.run_id / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}  # the run failed or was stopped before writing one
    run.summary = {k: v for k, v in summary.items()
                   if k not in ("status", "wandb_run_dir") and isinstance(v, (int, float, str, bool))}
    if run.stop_sent is not None:
        run.status = "stopped"
    elif summary.get("status") == "preempted":  # it saved a checkpoint: the next invocation resumes it
        run.status = "preempted"
    elif run.exit_code != 0 or not summary:
        run.status = "failed"
    else:
        run.status = summary["status"]


def last_line(path):
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def describe(run, config):
    """One line: id, status, exit code, the swept parameters, the metric."""
    def show(name, value):
        return f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"

    metric = config.get("metric", {}).get("name")
    parts = [run.run_id, f"{run.status:<8}", f"exit={run.exit_code}"]
    parts += [show(k, run.params.get(k)) for k, spec in config["parameters"].items() if "value" not in spec]
    if metric:
        parts.append(show(metric, run.summary.get(metric, "")))
    return "  ".join(parts)


def run_sweep(config, name, sweep_dir, ended, count, gpus):
    """Resume preempted runs, then launch new ones until the engine has none left, --count is used up or
    run_cap is reached."""
    param_names = list(config["parameters"])
    free = list(gpus) or [None]  # None: one run at a time, devices left as they are
    resume = [run for run in ended if run.status == "preempted"]
    ended[:] = [run for run in ended if run.status != "preempted"]
    running = []
    launched, exhausted = 0, False
    cap = config.get("run_cap", math.inf)
    try:
        while True:
            while free and resume:
                run = resume.pop(0)
                run.status, run.gpu = "running", free.pop(0)
                launch(config, run, sweep_dir, name)
                running.append(run)
            while free and not exhausted and launched < count and len(ended) + len(running) < cap:
                points = propose(config, [run.sweep_run(sweep_dir) for run in ended + running + resume], 1)
                if not points:
                    exhausted = True
                    break
                run = Run(generate_id(), points[0], gpu=free.pop(0))
                launch(config, run, sweep_dir, name)
                running.append(run)
                launched += 1
            if not running:
                break
            time.sleep(POLL_S)
            if "early_terminate" in config:
                stop_poor_runs(config, ended, running, sweep_dir)
            for run in [run for run in running if run.proc.poll() is not None]:
                running.remove(run)
                free.append(run.gpu)
                record(run, sweep_dir)
                ended.append(run)
                write_results(sweep_dir / "results.csv", ended, param_names)
                why = f"  [{last_line(sweep_dir / run.run_id / 'train.log')}]" if run.status == "failed" else ""
                print(f"{describe(run, config)}  ({time.monotonic() - run.started:.0f} s){why}", flush=True)
    finally:  # interrupted: stop our runs; those that saved a checkpoint get a `preempted` row, to resume
        for run in running:
            signal_group(run, signal.SIGTERM)
        for run in running:
            try:
                run.proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                signal_group(run, signal.SIGKILL)
                run.proc.wait()
            record(run, sweep_dir)
        ended += [run for run in running + resume if run.status == "preempted"]
        write_results(sweep_dir / "results.csv", ended, param_names)


def print_table(config, ended):
    metric = config.get("metric", {})
    name, sign = metric.get("name"), -1 if metric.get("goal") == "maximize" else 1

    def key(run):  # best first; runs without a finite value last
        value = run.summary.get(name)
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        return (not ok, sign * value if ok else 0)

    print(f"\n{len(ended)} runs, sorted by {name} ({metric.get('goal', 'minimize')}):")
    for run in sorted(ended, key=key):
        print(describe(run, config))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_file", help="a W&B sweep YAML, e.g. sweeps/lab1_lr.yaml")
    p.add_argument("--count", type=int, default=None, help="at most this many new runs in this invocation")
    p.add_argument("--dry_run", action="store_true", help="print the command lines, run nothing, write nothing")
    p.add_argument("--gpus", default="", help="comma-separated GPU ids: one run per GPU at a time")
    p.add_argument("--sweep_dir", default="", help="default runs/sweeps/<sweep file stem>")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    name = Path(args.sweep_file).stem
    sweep_dir = Path(args.sweep_dir or Path("runs") / "sweeps" / name)
    try:
        config = load_sweep(args.sweep_file)
        param_names = list(config["parameters"])
        ended = read_results(sweep_dir / "results.csv", param_names)
        grid = config["method"] == "grid"
        plan = propose(config, [run.sweep_run(sweep_dir) for run in ended],
                       math.inf if grid and args.count is None else args.count or 1)
        check_program_accepts(config, plan)
    except (SweepError, ValueError) as e:  # ValueError: the engine refuses the config (e.g. bayes without metric)
        print(f"sweep.py: error: {args.sweep_file}: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    if args.dry_run:
        if not plan:
            print(f"nothing left to run: every grid point has a row in {sweep_dir / 'results.csv'}", file=sys.stderr)
        for params in plan:
            print(shlex.join(command_line(config, params, sweep_dir / generate_id())))
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # so `finally` ends our runs
    try:
        run_sweep(config, name, sweep_dir, ended, args.count if args.count is not None else math.inf,
                  [g for g in args.gpus.split(",") if g])
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue", file=sys.stderr)
        sys.exit(130)
    print_table(config, ended)


if __name__ == "__main__":
    main()
