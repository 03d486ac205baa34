"""Offline sweep agent: run a sweeps/*.yaml file with W&B's own sweep engine, without a W&B server.

    python sweep.py sweeps/lab1_lr.yaml                # every grid point, one run at a time (CPU)
    python sweep.py sweeps/lab1_lr.yaml --dry_run      # print the command lines it would run now
    python sweep.py sweeps/bayes.yaml --count 10       # at most 10 new runs, then stop
    python sweep.py sweeps/bayes.yaml --gpus 0,1       # two runs at once, one per GPU
    python sweep.py sweeps/multi_gpu.yaml --gpus 0,1:2,3   # two runs at once, each on a pair of GPUs
    python sweep.py sweeps/lab1_lr.yaml --cold_start   # each run a new `python train.py` process (slower)

Online, the same files run with `wandb sweep sweeps/X.yaml` and then `wandb agent ENTITY/PROJECT/ID`.
Here the `sweeps` package (what the W&B server runs) picks the runs: `next_run` for grid, random and bayes,
`stop_runs` for hyperband. Each run is the YAML `command` expanded as `wandb agent` expands it, with one
addition, `--output_dir=<sweep_dir>/<run_id>`, and env WANDB_MODE=offline, WANDB_RUN_GROUP=<sweep name>,
WANDB_RUN_ID=<run_id>. `${interpreter}` is the Python running this script (wandb agent uses `python`).

Warm starts: with the default command, a helper process imports train.py's modules (torch, timm, accelerate,
wandb: about 4 s) once and runs nothing; each run is a fork of it that then runs exactly as `python train.py
ARGS` would, in its own process and process group, with its own environment, train.log and exit code.
--cold_start, or any other command (`accelerate launch`), starts each run as a new process instead.

State is runs/sweeps/<sweep name>/: results.csv (one row per ended run), sweep.yaml (the file that made it)
and claims/ (one file per run an agent is running). Run the same command again after an interruption: ended
runs are never repeated, and a `preempted` run (SIGTERM or Ctrl-C of this agent, however often) is resumed
first, under the same run id and folder, as is a run whose agent was killed outright (SIGKILL) once the run has
saved its checkpoint. A sweep folder holds one version of one file: an edited file is refused (start it in
another --sweep_dir). Several agents may share a sweep folder on one machine: a lock on the folder and a
claim per run make sure no point runs twice and no row is lost. The README's fault table says what survives what.
"""

import argparse
import ast
import atexit
import contextlib
import csv
import ctypes
import fcntl
import importlib
import itertools
import json
import math
import multiprocessing.reduction
import os
import re
import runpy
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np
import yaml

import runfiles

warnings.filterwarnings("ignore", message="Valid config keys have changed in V2")  # sweeps' pydantic v1 config
import jsonschema
import sweeps
from sweeps.params import HyperParameter
from wandb.sdk.launch.sweeps.utils import DEFAULT_SWEEP_COMMAND, create_sweep_command, create_sweep_command_args
from wandb.sdk.lib.runid import generate_id  # the 8-character id wandb.init would pick

HERE = Path(__file__).resolve().parent
POLL_S = 0.5  # seconds between checks of running runs (history.csv for hyperband); an exit is seen at once
KILL_GRACE_S = 30  # seconds between SIGTERM and SIGKILL, as wandb agent's kill delay
SWEEP_COPY, CLAIMS, LOCK = "sweep.yaml", "claims", ".lock"
CONFIG_COPY = "config_files.json"  # the text of each --config file the sweep names: it changes runs as the sweep does
FLAG_MACROS = ("args", "args_no_equals", "args_no_boolean_flags")  # ${...} that expand to flags train.py takes
SAY_CHECKING = 1000  # points: checking more flags than this takes long enough (about 10 ms a point) to say so


class SweepError(Exception):
    """A bad sweep file or flag: main() prints it as one line and exits with code 2, before any run."""


@dataclass
class Run:
    run_id: str
    params: dict  # parameter name -> value, as the engine proposed it
    status: str | None = None  # a word of runfiles.STATUSES once it has ended; None while it runs
    exit_code: int | None = None
    summary: dict = field(default_factory=dict)  # scalar summary.json entries
    proc: object = None  # subprocess.Popen, or WarmProcess
    gpu: str | None = None
    started: float = 0.0  # time.monotonic() at launch
    stop_sent: float | None = None  # time.monotonic() of the SIGTERM, when hyperband stops it
    claim: object = None  # the open, flock'ed claims/<run_id>.json while this agent runs it
    stale: tuple | None = None  # summary.json's (inode, mtime) at launch: a resumed run's earlier part wrote it

    def sweep_run(self, sweep_dir, history=True):
        """This run as the engine sees it: its config, state, summary, and history (bayes and Hyperband read it;
        grid and random do not, and reading every run's history.csv is what a large sweep cannot afford)."""
        state = (sweeps.RunState.running if self.status is None else
                 sweeps.RunState.failed if self.status == runfiles.FAILED else sweeps.RunState.finished)
        return sweeps.SweepRun(name=self.run_id, state=state, config={k: {"value": v} for k, v in self.params.items()},
                               summary_metrics=self.summary,
                               history=read_history(sweep_dir / self.run_id) if history else [])


# ----------------------------------------------------------------------------------------------
# The sweep file: parsed, validated by W&B's schema and engine, and checked against the program's own parser

class Loader(yaml.SafeLoader):
    """YAML with 1e-3 read as a number, as YAML 1.2 and every reader of the file does (PyYAML wants 1.0e-3), and a
    key given twice refused (PyYAML keeps the last silently, so one of two values would never run)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                             list("-+0123456789"))


def read_sweep(path):
    """The file as W&B's server fills it in; SweepError if it is not a valid W&B sweep."""
    try:
        raw = yaml.load(Path(path).read_text(), Loader=Loader)
    except (OSError, yaml.YAMLError) as e:
        raise SweepError(str(e)) from None
    if not isinstance(raw, dict):
        raise SweepError("a sweep file is a mapping with program, method, metric and parameters")
    parameters = raw.get("parameters")
    if not isinstance(parameters, dict) or not all(isinstance(spec, dict) for spec in parameters.values()):
        raise SweepError("parameters: must map each flag name to {value: x} or {values: [x, y]}")
    if bad := next((key for key in parameters if not isinstance(key, str)), None):
        raise SweepError(f"parameters: {bad!r} is not a flag name; name each parameter after a flag of train.py "
                         "(quote it if YAML reads it as a number)")
    try:
        violations = sweeps.schema_violations_from_proposed_config(raw)
        config = sweeps.SweepConfig(raw) if not violations else None
    except (ValueError, jsonschema.ValidationError) as e:
        violations = [e.args[0] if e.args else str(e)]
    if violations:
        raise SweepError("not a valid W&B sweep: " + "; ".join(violations))
    return config


def load_sweep(path):
    """The sweep, with every check that can fail made now, before any run."""
    config = read_sweep(path)
    if config["method"] not in ("grid", "random", "bayes"):
        raise SweepError(f"method {config['method']!r}: the sweeps engine offers grid, random and bayes")
    check_program(config.get("program", ""))
    check_command(config)
    if "output_dir" in config["parameters"]:
        raise SweepError("parameters: output_dir is sweep.py's to set (each run gets <sweep_dir>/<run id>); remove "
                         "it, and choose where with --sweep_dir")
    metric = config.get("metric", {}).get("name")
    if metric is not None and not runfiles.is_metric(metric):
        raise SweepError(f"metric: train.py never logs {metric!r}, so bayes would learn nothing and Hyperband stop "
                         "nothing; use one of its metrics (INTERFACE.md), e.g. val/acc")
    sweeps.next_run(config, [])  # the engine's own checks (ValueError), e.g. bayes without a metric
    if "early_terminate" in config:
        try:
            sweeps.stop_runs(config, [])  # otherwise checked only once a run has history
        except ValueError as e:
            raise SweepError(f"early_terminate: {e}") from None
    return config


def check_program(program):
    """sweep.py runs train.py: it adds --output_dir and reads each run's summary.json and history.csv. Checked by
    reading the file, not running it."""
    path = Path(program)
    if not path.is_file():
        raise SweepError(f"program {program!r} not found (paths are relative to where you run this)")
    if path.name != "train.py":
        raise SweepError(f"program {program!r}: sweep.py runs a train.py (it reads the summary.json train.py "
                         "writes); use program: train.py, or wandb agent for another program")
    try:
        tree = ast.parse(path.read_text(), str(path))
    except (SyntaxError, ValueError) as e:
        raise SweepError(f"program {program}: {e}") from None
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Assign):
            names |= {name.id for target in node.targets for name in ast.walk(target) if isinstance(name, ast.Name)}
    if missing := {"main", "parse_args"} - names:
        raise SweepError(f"program {program} has no {' or '.join(sorted(missing))}(): sweep.py runs this "
                         "project's train.py")


def check_command(config):
    """A command that passes the run's flags once, in a form train.py parses, and never overrides them."""
    command = [str(chunk) for chunk in config.get("command") or DEFAULT_SWEEP_COMMAND]
    macros = [chunk[2:-1] for chunk in command if chunk.startswith("${") and chunk.endswith("}")]
    if bad := [m for m in macros if m not in ("env", "interpreter", "program", *FLAG_MACROS)]:
        raise SweepError(f"command: ${{{bad[0]}}} is not a form of flags train.py reads; use ${{args}}")
    forms = [m for m in macros if m in FLAG_MACROS]
    if len(forms) != 1:
        raise SweepError(f"command: has {len(forms)} ${{args}}; it needs exactly one, where train.py's flags go")
    for chunk in command[command.index("${" + forms[0] + "}") + 1:]:
        name = chunk.split("=")[0].removeprefix("--")
        if chunk.startswith("--") and (name in config["parameters"] or name == "output_dir"):
            raise SweepError(f"command: {chunk} after ${{{forms[0]}}} overrides the sweep's value; remove it")
    binary = command[1] if command[0] == "${env}" and len(command) > 1 else command[0]
    if not binary.startswith("${") and not shutil.which(binary, path=run_path()):
        raise SweepError(f"command: {binary!r} is not a program on PATH (nor beside this Python); install it, or "
                         "fix the command")


def run_path():
    """The PATH each run gets: this Python's folder first, so a command's `accelerate` is the one installed with it."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def identity(config):
    """What makes a run: the whole file as the engine fills it in, command included."""
    return json.loads(json.dumps({**config, "command": list(config.get("command") or DEFAULT_SWEEP_COMMAND)},
                                 sort_keys=True, default=str))


def config_files(config):
    """{path: text} of every file the sweep passes as train.py's --config (paths relative to the cwd, as train.py
    reads them); a missing file is left to train.py's own error."""
    spec = config["parameters"].get("config", {})
    paths = spec["values"] if "values" in spec else [spec["value"]] if "value" in spec else []
    return {str(p): Path(p).read_text() for p in paths if p and Path(p).is_file()}


def as_read(text):
    """A --config file's text as train.py reads it (yaml.safe_load): its comments and layout change no run."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def check_same_sweep(config, sweep_file, sweep_dir):
    """A sweep folder holds the results of one version of one file: results made otherwise are never reused."""
    saved = sweep_dir / SWEEP_COPY
    if not saved.exists():
        if (sweep_dir / runfiles.RESULTS).exists():
            raise SweepError(f"{sweep_dir} has no {SWEEP_COPY} saying which file made its results: if {sweep_file} "
                             f"is unchanged since, copy it to {saved}; else start fresh with --sweep_dir")
        return
    old, new = identity(read_sweep(saved)), identity(config)
    changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k) and k != "parameters"]
    parameters = old.get("parameters", {}), new.get("parameters", {})
    changed += [f"parameters.{k}" for k in sorted(parameters[0].keys() | parameters[1].keys())
                if parameters[0].get(k) != parameters[1].get(k)]
    copies = sweep_dir / CONFIG_COPY
    old_files = json.loads(copies.read_text()) if copies.exists() else {}
    changed += [f"config file {p}" for p, text in config_files(config).items()
                if as_read(old_files.get(p, text)) != as_read(text)]
    if changed:
        raise SweepError(f"{sweep_dir} holds the results of another version of this file (changed: "
                         f"{', '.join(changed)}); start fresh with --sweep_dir NEW_DIR, or delete {sweep_dir}")


def edge_values(name, spec):
    """Every value a parameter can take, or for a distribution the ends of what it can produce, computed by the
    engine's own ppf at 0 and 1: min and max, for q_* the quantised ends, for normal -inf and inf."""
    param = HyperParameter(name, spec)
    if param.type == param.CONSTANT:
        return [param.config["value"]]
    if param.type in (param.CATEGORICAL, param.CATEGORICAL_PROB):
        return list(param.config["values"])
    if param.type == param.INT_UNIFORM:  # its ppf(0) is min - 1 (scipy's randint), a value sample() never gives
        return [param.config["min"], param.config["max"]]
    with np.errstate(all="ignore"):  # ppf(0) of a normal is -inf: that end is what the check must see
        ends = [np.asarray(param.ppf(x)).item() for x in (0.0, 1.0)]
        if spec.get("distribution", "").startswith("q_"):  # a quantised infinite end is inf cast to int: garbage
            free = HyperParameter(name, {**{k: v for k, v in spec.items() if k != "q"},
                                         "distribution": spec["distribution"][2:]})
            unquantised = [float(free.ppf(x)) for x in (0.0, 1.0)]
            ends = [end if math.isfinite(u) else u for end, u in zip(ends, unquantised, strict=True)]
    return ends


def edge_points(config):
    """Points that between them give every parameter each of its edge values, from two corners (every parameter at
    its first edge, and at its last), one parameter changed at a time: a product of every edge would be 2^k points
    for k distributions, and train.py's rules that join two flags are met at the corners."""
    edges = {name: edge_values(name, spec) for name, spec in config["parameters"].items()}
    points = {}
    for corner in (0, -1):
        base = {name: values[corner] for name, values in edges.items()}
        for point in [base] + [{**base, name: value} for name, values in edges.items() for value in values]:
            points.setdefault(json.dumps(point, sort_keys=True), point)
    return list(points.values())


def flag_checks(config, points):
    """[argv, note] pairs for check_flags: each planned point and, as a random or bayes sweep draws its values, the
    edge points of its distributions (a grid's planned points are every value it will run)."""
    checks = [[flags(params), ""] for params in points]
    if config["method"] != "grid":
        edges = edge_points(config)
        checks += [[flags(params), "values at the ends of the sweep's distributions"] for params in edges]
    return checks


def check_program_accepts(config, checks, starter=None):
    """Parse each check's flags with the program's own parse_args, so a bad parameter stops the sweep now. That
    runs in a process of its own (check_flags), a fork of the warm-start process if there is one, else of this
    one: this agent neither pays the program's imports nor runs its code, and no new process imports sweep.py's."""
    if len(checks) > SAY_CHECKING:
        print(f"checking {len(checks):,} points' flags with {config['program']}'s parse_args before any run (give "
              "--count N to check and run fewer at a time)", file=sys.stderr, flush=True)
    if starter:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "check.log"
            code = starter.start(config["program"], checks, dict(os.environ), out, check=True).wait()
            text = out.read_text()
    else:
        text, code = forked(check_flags, config["program"], checks)
    if code != 0:
        raise SweepError(last_line(text) or f"checking its flags ended with exit code {code}")


def forked(function, *args):
    """function(*args, out=FILE) in a fork of this process, where it ends the process -> (what it and the
    program's imports printed, its exit code)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.dup2(write, 1)
        os.dup2(write, 2)
        out = os.fdopen(write, "w")
        try:
            function(*args, out=out)
        except BaseException:  # an error in the program's own imports: say what, never run on as a second agent
            traceback.print_exc(file=out)
            out.flush()
        os._exit(1)
    os.close(write)
    with os.fdopen(read, errors="replace") as f:
        text = f.read()
    return text, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def check_flags(program, argvs, out=None):
    """In a process of its own, each [argv, note]: print the first that the program's parse_args rejects and exit
    2, or exit 0. check_program made sure it is a train.py with parse_args, which does nothing at import but
    import."""
    sys.path[0] = str(Path(program).resolve().parent)  # as `python train.py` has it
    os.environ["WANDB_MODE"] = "offline"  # as launch gives every run
    module = runpy.run_path(program, run_name="__sweep_check__")  # its globals; main() does not run
    error = first_rejected(module, argvs)
    if error:
        print(f"{program} {error}", file=out or sys.stdout, flush=True)
    os._exit(2 if error else 0)  # tearing down torch & co. would take seconds


def first_rejected(module, argvs):
    """'rejects `ARGV`: why' for the first [argv, note] that the program (its globals) refuses, else None."""
    for argv, note in argvs:
        try:
            module["parse_args"](argv)
        except (module.get("ConfigError", ValueError), SystemExit) as e:
            return f"rejects `{shlex.join(argv)}`{f' ({note})' if note else ''}: {e}"
    return None


def propose(config, runs, n, sweep_dir=None):
    """Up to n new parameter points (n may be math.inf for a grid: all it has left), none a point of runs (every
    agent's ended and running Runs). A grid's points come from grid_points, those taken skipped; random and bayes
    ask the engine once for n, and it counts its own proposals as pending, so that none repeats."""
    if n <= 0:
        return []
    if config["method"] == "grid":
        taken = {point_key(config, run.params) for run in runs}
        left = (point for point in grid_points(config) if point_key(config, point) not in taken)
        return list(itertools.islice(left, None if n == math.inf else n))
    proposals = sweeps.next_runs(config, engine_runs(config, runs, sweep_dir), n=n)
    return [{k: native(v["value"]) for k, v in run.config.items()} for run in proposals]


GRIDS = {}  # a grid sweep's identity -> its points: an agent computes them once


def grid_points(config):
    """Every point of a grid in the engine's order, computed by the engine once an agent (next_runs with no runs).
    The engine, asked for each next point, computes and hashes the whole grid again: 0.4 s a proposal at 10,000
    points, and sweep.py asked it once for each point of a plan (bench/RESULTS.md)."""
    key = json.dumps(identity(config), sort_keys=True)
    if key not in GRIDS:
        GRIDS[key] = [{k: native(v["value"]) for k, v in run.config.items()}
                      for run in sweeps.next_runs(config, [], n=sys.maxsize) if run is not None]  # None: the end
    return GRIDS[key]


def point_key(config, params):
    """What tells grid points apart, as the engine tells them: the values of the parameters that vary."""
    return json.dumps([params.get(k) for k, spec in config["parameters"].items() if "value" not in spec])


def native(value):
    """An engine value as Python has it: q_* distributions and normal give numpy scalars, which neither JSON (the
    claim, results.csv) nor the flags take as they are."""
    return value.item() if isinstance(value, np.generic) else value


def engine_runs(config, runs, sweep_dir):
    """runs as the engine sees them, with their history only where the method reads it (bayes)."""
    return [run.sweep_run(sweep_dir, history=config["method"] == "bayes" and sweep_dir is not None) for run in runs]


def flags(params, run_dir=None):
    """The run's flags as `wandb agent` writes them (--name=value), plus --output_dir."""
    extra = {"output_dir": {"value": str(run_dir)}} if run_dir is not None else {}
    return create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()} | extra})["args"]


def command_line(config, params, run_dir):
    """The argv `wandb agent` builds for these parameters, plus --output_dir."""
    args = {k: {"value": v} for k, v in params.items()} | {"output_dir": {"value": str(run_dir)}}
    macros = create_sweep_command_args({"args": args})
    macros.update(env=["/usr/bin/env"], interpreter=[sys.executable], program=[config["program"]])
    argv = []
    for chunk in create_sweep_command(list(config.get("command") or DEFAULT_SWEEP_COMMAND)):
        chunk = str(chunk)
        argv += macros[chunk[2:-1]] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return argv


# ----------------------------------------------------------------------------------------------
# The sweep folder: results.csv, claims/ and the lock that several agents share

def read_results(path, parameters):
    """results.csv -> Runs; a parameter's cell reads back as the sweep's own value ('1e3' quoted stays a string)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    declared = {k: declared_values(spec) for k, spec in parameters.items()}
    runs = []
    for row in rows:
        values = {k: v if k in runfiles.TEXT_COLUMNS else runfiles.parse_cell(v)
                  for k, v in row.items() if v not in ("", None) and k not in parameters}
        params = {k: declared[k].get(row[k], runfiles.parse_cell(row[k])) for k in parameters if row.get(k, "") != ""}
        runs.append(Run(row["run_id"], params, row["status"], values.get("exit_code"),
                        {k: v for k, v in values.items() if k not in runfiles.RESULT_COLUMNS}))
    return runs


def declared_values(spec):
    """{cell text: value} of a parameter's values in the sweep file, the first of any that read alike: a cell
    reads back as the value it was written from (a lookup, not a search: a grid may have 10,000 values)."""
    declared = [spec["value"]] if "value" in spec else spec.get("values", [])
    lookup = {}
    for value in declared:
        lookup.setdefault(str(value), value)
    return lookup


def write_results(path, runs, param_names):
    rows = [{"run_id": run.run_id, "status": run.status, "exit_code": run.exit_code, **run.params, **run.summary}
            for run in runs]
    runfiles.write_results(path, rows, param_names)


def read_history(run_dir):
    try:
        return runfiles.read_history(run_dir / runfiles.HISTORY)
    except (OSError, ValueError):
        return []  # a row being appended (train.py before atomic history.csv): read it again at the next poll


@contextlib.contextmanager
def locked(sweep_dir):
    """The sweep folder's lock, held while an agent reads the sweep's state and claims a run, and while it rewrites
    results.csv. flock: the kernel releases it when its holder ends, however it ends."""
    with open(sweep_dir / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def claim(sweep_dir, run):
    """claims/<run_id>.json, flock'ed by this agent for as long as it runs the run (call under the lock)."""
    path = sweep_dir / CLAIMS / f"{run.run_id}.json"
    path.parent.mkdir(exist_ok=True)
    run.claim = path.open("w")
    fcntl.flock(run.claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
    json.dump({"run_id": run.run_id, "params": run.params, "pid": os.getpid(), "host": socket.gethostname()},
              run.claim)
    run.claim.flush()


def unclaim(sweep_dir, run):
    """The run is no longer this agent's (call under the lock)."""
    (sweep_dir / CLAIMS / f"{run.run_id}.json").unlink(missing_ok=True)
    run.claim.close()


def claimed_runs(sweep_dir):
    """-> (held, stale): the runs of claims whose flock is held, by an agent or by the run it started (which
    inherits the claim: sweep.py SIGKILLed, its runs still save their checkpoints), and of claims whose lock is
    free: agent and run both gone. A claim cut while being written reads as stale, without params."""
    held, stale = [], []
    for path in sorted((sweep_dir / CLAIMS).glob("*.json")):
        with contextlib.suppress(FileNotFoundError), path.open() as f:  # FileNotFoundError: it just ended
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                with contextlib.suppress(ValueError):  # being written: its agent holds the lock of the sweep
                    data = json.loads(f.read())
                    held.append(Run(data["run_id"], data["params"]))
                continue
            try:
                stale.append(Run(path.stem, json.loads(f.read())["params"]))
            except (ValueError, KeyError):
                stale.append(Run(path.stem, None))
    return held, stale


def left_behind(sweep_dir, run):
    """A stale claim's run as its folder says it ended: the final status of its summary.json, or `preempted` when
    it saved a checkpoint (to resume, under its id), else None (cut off before either: its point runs again)."""
    if run.params is None:  # its claim was cut while being written: nothing says which point it ran
        return None
    run_dir = sweep_dir / run.run_id
    summary = runfiles.read_json(run_dir / runfiles.SUMMARY) or {}
    if summary.get("status") in runfiles.STATUSES and summary["status"] != runfiles.PREEMPTED:
        run.status = summary["status"]
    elif runfiles.has_checkpoint(run_dir):
        run.status = runfiles.PREEMPTED
    else:
        return None
    run.summary, run.exit_code = scalars(summary), None  # its exit code went with its agent
    return run


def sweep_state(config, sweep_dir, write=False):
    """The sweep as every agent left it -> (rows, held claims), each stale claim's run in rows if left_behind gives
    it a status. With write (under the lock), those rows are saved and the stale claims removed."""
    rows = read_results(sweep_dir / runfiles.RESULTS, config["parameters"])
    held, stale = claimed_runs(sweep_dir)
    found = {run.run_id: run for run in stale if left_behind(sweep_dir, run)}
    if found:
        rows = [row for row in rows if row.run_id not in found] + list(found.values())
    if write:
        if found:
            write_results(sweep_dir / runfiles.RESULTS, rows, list(config["parameters"]))
        for run in stale:
            (sweep_dir / CLAIMS / f"{run.run_id}.json").unlink(missing_ok=True)
    return rows, held


def every_run(rows, claimed):
    """The sweep's runs, each once: ended ones (rows) and running ones (claims; a resumed run has both)."""
    ended = {row.run_id for row in rows}
    return rows + [run for run in claimed if run.run_id not in ended]


def to_resume(rows, held):
    """The preempted runs no agent is resuming, oldest first."""
    busy = {run.run_id for run in held}
    return [row for row in rows if row.status == runfiles.PREEMPTED and row.run_id not in busy]


def new_runs_allowed(config, everyone, count):
    """How many new runs an agent may start: --count, within run_cap (every agent's runs count)."""
    return min(count, config.get("run_cap", math.inf) - len(everyone))


def next_run(config, sweep_dir, new_allowed):
    """Claim this agent's next run: a preempted run nobody is resuming, else (if new_allowed) a new point from the
    engine, which sees every agent's ended and running runs. -> (run, rows of results.csv), run None if none."""
    with locked(sweep_dir):
        rows, held = sweep_state(config, sweep_dir, write=True)
        run = next(iter(to_resume(rows, held)), None)
        everyone = every_run(rows, held)
        if run is None and new_allowed and new_runs_allowed(config, everyone, 1) > 0:
            points = propose(config, everyone, 1, sweep_dir)
            run = Run(generate_id(), points[0]) if points else None
        if run is not None:
            claim(sweep_dir, run)
    return run, rows


def plan(config, sweep_dir, count):
    """What an invocation would run now, read without the lock and writing nothing: (preempted runs it would
    resume, the new points it would start). Random and bayes never run out: without --count or run_cap, one."""
    rows, held = sweep_state(config, sweep_dir)
    everyone = every_run(rows, held)
    n = new_runs_allowed(config, everyone, count)
    if n == math.inf and config["method"] != "grid":
        n = 1
    return to_resume(rows, held), propose(config, everyone, n, sweep_dir)


def save_row(config, sweep_dir, run):
    """This run's row replaces any earlier one of the same id (its preempted part); its claim ends. -> rows"""
    with locked(sweep_dir):
        rows = [row for row in read_results(sweep_dir / runfiles.RESULTS, config["parameters"])
                if row.run_id != run.run_id]
        write_results(sweep_dir / runfiles.RESULTS, rows + [run], list(config["parameters"]))
        unclaim(sweep_dir, run)
    return rows + [run]


def start_sweep_folder(config, sweep_file, sweep_dir):
    """The folder, with the copy of the file that makes its results (checked again under the lock: another agent
    may have started it a moment ago from another version)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with locked(sweep_dir):
        check_same_sweep(config, sweep_file, sweep_dir)
        if not (sweep_dir / SWEEP_COPY).exists():
            tmp = sweep_dir / (SWEEP_COPY + ".tmp")
            shutil.copyfile(sweep_file, tmp)
            runfiles.write_json(sweep_dir / CONFIG_COPY, config_files(config))
            os.replace(tmp, sweep_dir / SWEEP_COPY)


# ----------------------------------------------------------------------------------------------
# Warm starts: each run is a fork of a process that has imported train.py's modules and run nothing

def warm_program(config):
    """The program to warm-start (check_program made sure it is a train.py), or None: any command but the default
    one, such as `accelerate launch`, needs a process of its own making."""
    command = [str(chunk) for chunk in config.get("command") or DEFAULT_SWEEP_COMMAND]
    return config["program"] if command == DEFAULT_SWEEP_COMMAND else None


class WarmStarter:
    """The agent's end of the warm-start server (serve_warm): start a run, learn when it ends."""

    def __init__(self, program):
        ours, theirs = socket.socketpair()
        code = (f"import sys; sys.path[0] = {str(HERE)!r}; import sweep; "
                f"sweep.warm_child(sweep.serve_warm({str(program)!r}, {theirs.fileno()}))")
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[theirs.fileno()],
                                     stdin=subprocess.DEVNULL, preexec_fn=lambda: die_with_parent(signal.SIGKILL))
        theirs.close()
        self.conn = Connection(ours.detach())
        self.exits = {}  # pid -> exit code, as subprocess.Popen.returncode gives it, of runs that ended

    def start(self, program, args, env, log, check=False, claim=None):
        """A run of program with args; with check, args is a list of argvs for check_flags instead. claim: a file
        descriptor the run inherits (its claim, whose flock then lasts as long as the run)."""
        self.conn.send({"program": str(program), "args": args, "env": env, "log": str(log), "check": check,
                        "claim": claim is not None})
        if claim is not None:
            multiprocessing.reduction.send_handle(self.conn, claim, self.proc.pid)
        while "exit" in (message := self.receive()):
            pass
        return WarmProcess(message["pid"], self)

    def collect(self, timeout):
        """Wait up to timeout seconds for a run to end; note every end reported."""
        while self.conn.poll(timeout):
            self.receive()
            timeout = 0

    def receive(self):
        try:
            message = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"sweep.py's warm-start process ended (exit {self.proc.wait()}); run the same "
                               "command again, or add --cold_start") from None
        if "exit" in message:
            self.exits[message["pid"]] = message["exit"]
        return message

    def close(self):
        self.conn.close()  # the server exits when it reads the end
        self.proc.wait()


class WarmProcess:
    """A warm-started run, with what the agent uses of subprocess.Popen: pid, returncode, poll and wait."""

    def __init__(self, pid, starter):
        self.pid, self.starter, self.returncode = pid, starter, None

    def poll(self):
        if self.returncode is None:
            self.starter.collect(0)
            self.returncode = self.starter.exits.pop(self.pid, None)
        return self.returncode

    def wait(self, timeout=None):
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"run {self.pid}", timeout)
            self.starter.collect(min(POLL_S, deadline - time.monotonic()))
        return self.returncode


def serve_warm(program, fd):
    """The warm-start server, a process of its own: import what every run imports, then fork a child for each
    request and report each child's end. Returns only in a child, with its request; exits when the agent does."""
    conn = Connection(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and a job's SIGTERM are the agent's to handle: it stops
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # its runs, and needs this process to tell it how they ended
    sys.path[0] = str(Path(program).resolve().parent)  # as `python train.py` has it
    runpy.run_path(program, run_name="__warm__")  # imports torch, timm, accelerate, wandb; runs nothing
    importlib.import_module("wandb.sdk.launch")  # wandb.init imports it in every run: 1.2 s saved per run
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)  # a child's end (SIGCHLD) wakes the wait below
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
        ready = wait([conn, wake_r])
        if wake_r in ready:
            os.read(wake_r, 4096)
        for pid, code in reap():
            conn.send({"pid": pid, "exit": code})
        if conn in ready:
            try:
                request = conn.recv()
                claim = multiprocessing.reduction.recv_handle(conn) if request["claim"] else None
            except EOFError:  # the agent is done, or gone; tearing down what was imported would take seconds
                os._exit(0)
            pid = fork_run()
            if pid == 0:  # the run keeps its claim's descriptor open until it ends
                conn.close()
                os.close(wake_r)
                os.close(wake_w)
                return request
            if claim is not None:
                os.close(claim)
            conn.send({"pid": pid})


def reap():
    """(pid, exit code) of each child that has ended, the code as subprocess.Popen.returncode gives it."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, os.waitstatus_to_exitcode(status)


def fork_run():
    """os.fork, the child in its own session (as Popen(start_new_session=True)) before the parent learns its pid,
    so that a signal sent to the run's process group can never miss it."""
    parent = os.getpid()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(ready_w)
        os.read(ready_r, 1)  # returns when the child closes its end
        os.close(ready_r)
        return pid
    os.close(ready_r)
    os.setsid()
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:  # the server died before prctl: nobody would ever see this run
        os._exit(128 + signal.SIGTERM)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the handlers of a new Python process
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.close(ready_w)
    return 0


def warm_child(request):
    """In a fork of the warm-start server: become `python PROGRAM ARGS`, with the run's environment and log, and
    end as Python ends: SystemExit's code, a traceback and 1 for an exception, threads joined, atexit hooks run."""
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.environ.clear()
    os.environ.update(request["env"])
    # wandb makes one media folder per process at import and deletes it at exit: a run gets a folder of its own,
    # or the first run to end would delete the one every other run writes its tables to.
    media = sys.modules.get("wandb.sdk.data_types._private")
    if media is not None:
        media.MEDIA_TMP.name = tempfile.mkdtemp("wandb-media")
    if request["check"]:
        check_flags(request["program"], request["args"])
    sys.argv = [request["program"], *request["args"]]
    code = 0
    try:
        runpy.run_path(request["program"], run_name="__main__")  # train.py's own START is set again here
    except SystemExit as stop:  # as Python: None is 0, an int is the code, anything else is printed and 1
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)
    except BaseException as error:  # what the interpreter does with an uncaught exception
        sys.excepthook(type(error), error, error.__traceback__)
        code = -signal.SIGINT if isinstance(error, KeyboardInterrupt) else 1
    # Python's own exit, less tearing down every module, which takes 2 s of a 2-core CPU (bench/RESULTS.md) and
    # is of no use to a process that is ending: multiprocessing's children end the same way.
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # wandb's teardown, tempfile's clean-up, logging's flush ...
    sys.stdout.flush()
    sys.stderr.flush()
    if code == -signal.SIGINT:  # an uncaught Ctrl-C: die of SIGINT, as Python does
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


# ----------------------------------------------------------------------------------------------
# Running: launch, poll, stop, record

def die_with_parent(sig=signal.SIGTERM):
    """In a child: if its parent dies, even by SIGKILL, the kernel sends it sig."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG


def fingerprint(path):
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns  # runfiles.write_json replaces a file: a new inode


def launch(config, run, sweep_dir, name, starter):
    run_dir = sweep_dir / run.run_id
    run_dir.mkdir(parents=True, exist_ok=True)  # exists when a preempted run is resumed
    run.status, run.stop_sent, run.stale = None, None, fingerprint(run_dir / runfiles.SUMMARY)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_RUN_GROUP=name, WANDB_RUN_ID=run.run_id, PATH=run_path())
    if run.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = run.gpu
    # The run inherits its claim: if this agent dies (even SIGKILL), the claim stays held until the run has saved
    # its checkpoint and ended, and no other agent takes the point meanwhile (claimed_runs).
    if starter:
        run.proc = starter.start(config["program"], flags(run.params, run_dir), env, run_dir / runfiles.LOG,
                                 claim=run.claim.fileno())
    else:
        with (run_dir / runfiles.LOG).open("ab") as log:  # the run's own output; the terminal gets a line per run
            run.proc = subprocess.Popen(command_line(config, run.params, run_dir), env=env, stdout=log,
                                        stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
                                        pass_fds=[run.claim.fileno()],
                                        start_new_session=True)  # its own group: signals reach accelerate's workers
    run.started = time.monotonic()


def signal_group(run, sig):
    try:
        os.killpg(run.proc.pid, sig)
    except ProcessLookupError:
        pass


def stop_poor_runs(config, rows, running, sweep_dir):
    """Hyperband: ask the engine which running runs to stop, from every run's history.csv."""
    by_id = {run.run_id: run for run in running}
    ended = [row for row in rows if row.run_id not in by_id]
    for sweep_run in sweeps.stop_runs(config, [run.sweep_run(sweep_dir) for run in ended + running]):
        run = by_id[sweep_run.name]
        if run.stop_sent is None:
            run.stop_sent = time.monotonic()
            signal_group(run, signal.SIGTERM)
    for run in running:
        if run.stop_sent is not None and time.monotonic() - run.stop_sent > KILL_GRACE_S:
            signal_group(run, signal.SIGKILL)


def record(run, sweep_dir):
    """Status and metrics of a run whose process has ended. What its folder says outranks its exit code: a final
    summary.json is the run's status even when a signal or a kill came after it (in W&B's finish, in the
    interpreter's teardown), and a checkpoint makes a signalled run `preempted`."""
    run_dir = sweep_dir / run.run_id
    run.exit_code = run.proc.returncode
    summary = runfiles.read_json(run_dir / runfiles.SUMMARY) or {}
    if summary.get("status") == runfiles.PREEMPTED and fingerprint(run_dir / runfiles.SUMMARY) == run.stale:
        summary = {}  # its earlier part's, which this part did not get as far as replacing
    run.summary = scalars(summary)
    status = summary.get("status")
    signalled = run.exit_code in (-signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT)
    if run.stop_sent is not None and status in (None, runfiles.PREEMPTED):
        run.status = runfiles.STOPPED  # for good: it keeps no checkpoint, and its summary.json says so too
        runfiles.remove_checkpoint(run_dir / runfiles.CHECKPOINT)
        runfiles.write_json(run_dir / runfiles.SUMMARY, {**summary, "status": runfiles.STOPPED})
    elif status in runfiles.STATUSES:
        run.status = status
    elif signalled and runfiles.has_checkpoint(run_dir):
        run.status = runfiles.PREEMPTED  # a signal in a resume's start-up leaves the earlier checkpoint: resume it
    else:
        run.status = runfiles.FAILED  # a resume that crashes too: never resumed again in a loop


def scalars(summary):
    """The summary.json entries results.csv keeps."""
    return {k: v for k, v in summary.items()
            if k not in ("status", "wandb_run_dir") and isinstance(v, (int, float, str, bool))}


def last_line(text):
    lines = text.strip().splitlines()
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


class Stop:
    """SIGTERM (a job's end, a scheduler) and SIGINT (Ctrl-C) only ask the agent to stop: the loop sees it within
    POLL_S, and a second signal, however soon, cannot cut the shutdown that stops the runs and writes their rows."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request)

    def request(self, signum, frame):
        self.signal = self.signal or signum


def run_sweep(config, name, sweep_dir, count, gpus, starter, stop):
    """Claim and run runs, preempted ones first, until there are none left for this agent, --count new ones have
    started, run_cap is reached or stop is asked. -> every agent's rows of results.csv."""
    free = list(gpus) or [None]  # None: one run at a time, devices left as they are
    running, rows = [], []
    launched, exhausted = 0, False
    try:
        while not stop.signal:
            while free and not exhausted and not stop.signal:
                run, rows = next_run(config, sweep_dir, launched < count)
                if run is None:
                    exhausted = True
                    break
                if run.status != runfiles.PREEMPTED:  # --count limits new runs, not resumes
                    launched += 1
                run.gpu = free.pop(0)
                launch(config, run, sweep_dir, name, starter)
                running.append(run)
            if not running:
                break
            if starter:
                starter.collect(POLL_S)  # returns as soon as a run ends
            else:
                time.sleep(POLL_S)
            if "early_terminate" in config:
                stop_poor_runs(config, rows, running, sweep_dir)
            for run in [run for run in running if run.proc.poll() is not None]:
                running.remove(run)
                free.append(run.gpu)
                record(run, sweep_dir)
                rows = save_row(config, sweep_dir, run)
                report(run, config, sweep_dir)
    finally:  # asked to stop, or an error of the agent's own: stop our runs, and keep what each left
        shut_down(config, sweep_dir, running)
    return read_results(sweep_dir / runfiles.RESULTS, config["parameters"])


def shut_down(config, sweep_dir, running):
    """SIGTERM to each run, SIGKILL KILL_GRACE_S later to any still running. A run that saved a checkpoint gets a
    `preempted` row, one that ended meanwhile its own; one cut off in start-up gets none: its point runs again."""
    if running:
        say(f"stopping {len(running)} run(s): each saves a checkpoint to resume from (SIGKILL after "
            f"{KILL_GRACE_S} s)", file=sys.stderr)
    for run in running:
        signal_group(run, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    for run in running:
        try:
            run.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(run, signal.SIGKILL)
            run.proc.wait()
        record(run, sweep_dir)
        if run.status == runfiles.FAILED:
            with locked(sweep_dir):
                unclaim(sweep_dir, run)
        else:
            save_row(config, sweep_dir, run)
            report(run, config, sweep_dir)


def report(run, config, sweep_dir):
    """The run's line as it ends; a failed run's ends with its last line of output."""
    log = (sweep_dir / run.run_id / runfiles.LOG).read_text(errors="replace")
    why = f"  [{last_line(log)}]" if run.status == runfiles.FAILED else ""
    say(f"{describe(run, config)}  ({time.monotonic() - run.started:.0f} s){why}")


def say(*lines, file=None):
    """Print; output cut short (`sweep.py ... | head`) is not an error: the rest goes nowhere, the sweep goes on.
    -> whether anyone still reads it."""
    stream = file or sys.stdout
    try:
        for line in lines:
            print(line, file=stream, flush=True)
        return True
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        return False


def print_table(config, ended):
    metric = config.get("metric", {})
    name, sign = metric.get("name"), -1 if metric.get("goal") == "maximize" else 1

    def key(run):  # best first; runs without a finite value last
        value = run.summary.get(name)
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        return (not ok, sign * value if ok else 0)

    say(f"\n{len(ended)} runs, sorted by {name} ({metric.get('goal', 'minimize')}):",
        *(describe(run, config) for run in sorted(ended, key=key)))


def gpu_groups(text):
    """--gpus: "0,1,2,3" is one run per GPU, "0,1:2,3" one run per group of GPUs. -> each group's
    CUDA_VISIBLE_DEVICES. A GPU is an index or a UUID (GPU-..., MIG-...), in one group only: never two runs on it."""
    groups = [group.split(",") for group in text.split(":")] if ":" in text else [[gpu] for gpu in text.split(",")]
    ids = [gpu.strip() for group in groups for gpu in group]
    if not text or not all(re.fullmatch(r"\d+|(GPU|MIG)-[\w/-]+", gpu) for gpu in ids):
        raise argparse.ArgumentTypeError(f"{text!r}: give GPU indices, one run per GPU (--gpus 0,1,2,3), or groups "
                                         "of them, one run per group (--gpus 0,1:2,3)")
    if twice := sorted({gpu for gpu in ids if ids.count(gpu) > 1}):
        raise argparse.ArgumentTypeError(f"{text!r}: GPU {twice[0]} is given twice, so two runs would share it")
    return [",".join(gpu.strip() for gpu in group) for group in groups]


def check_gpus(config, groups):
    """A command that starts N processes a run (accelerate launch --num_processes N) needs N GPUs in each group."""
    command = [str(chunk) for chunk in config.get("command") or DEFAULT_SWEEP_COMMAND]
    given = " ".join(command).replace("--num_processes ", "--num_processes=")
    found = re.search(r"--num_processes=(\d+)", given)
    if found and groups and any(len(group.split(",")) != int(found[1]) for group in groups):
        n = int(found[1])
        example = ":".join(",".join(str(i * n + j) for j in range(n)) for i in range(2))
        raise SweepError(f"command: runs {n} processes a run (--num_processes={n}), so each --gpus group needs {n} "
                         f"GPUs, not {', '.join(groups)}; e.g. --gpus {example}")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as every other mistake sweep.py reports
        print(f"sweep.py: error: {message} (see python sweep.py --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None):
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_file", help="a W&B sweep YAML, e.g. sweeps/lab1_lr.yaml")
    p.add_argument("--count", type=int, default=None, help="at most this many new runs in this invocation")
    p.add_argument("--dry_run", action="store_true",
                   help="print the command lines an invocation would run now (resumes first, then new runs, within "
                        "--count and run_cap); run nothing, write nothing")
    p.add_argument("--gpus", type=gpu_groups, default=[],
                   help="one run per GPU at a time (0,1,2,3), or one run per group of GPUs (0,1:2,3), each run "
                        "with its group as CUDA_VISIBLE_DEVICES")
    p.add_argument("--sweep_dir", default="", help="default runs/sweeps/<sweep file stem>")
    p.add_argument("--cold_start", action="store_true",
                   help="start each run as a new `python train.py` process, as wandb agent does, instead of a fork "
                        "of a process that has already imported train.py's modules (slower: for comparisons)")
    return p.parse_args(argv)


def check_writable(path):
    """The sweep folder is a folder this agent can write, or can make: found before anything starts, writing
    nothing (a --dry_run writes nothing either)."""
    existing = next(p for p in (Path(path).absolute(), *Path(path).absolute().parents) if p.exists())
    if not existing.is_dir():
        raise SweepError(f"--sweep_dir {path}: {existing} is a file, so no folder can be made there; give another "
                         "--sweep_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "is on a read-only disk" if os.statvfs(existing).f_flag & os.ST_RDONLY else "is not yours to write"
        raise SweepError(f"--sweep_dir {path}: {existing} {why}; give another --sweep_dir")


def main(argv=None):
    args = parse_args(argv)
    name = Path(args.sweep_file).stem
    sweep_dir = Path(args.sweep_dir or Path("runs") / "sweeps" / name)
    count = args.count if args.count is not None else math.inf
    starter = None
    try:
        config = load_sweep(args.sweep_file)
        check_gpus(config, args.gpus)
        check_same_sweep(config, args.sweep_file, sweep_dir)
        check_writable(sweep_dir)
        program = None if args.cold_start or args.dry_run else warm_program(config)
        starter = WarmStarter(program) if program else None  # it imports while the engine proposes
        resumes, points = plan(config, sweep_dir, count)
        check_program_accepts(config, flag_checks(config, points), starter)
    except (SweepError, ValueError) as e:  # ValueError: the engine refuses the config (e.g. bayes without metric)
        print(f"sweep.py: error: {args.sweep_file}: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)  # the warm-start process, if any, dies with this one (PR_SET_PDEATHSIG)
    except KeyboardInterrupt:  # nothing is written yet
        sys.exit(130)
    if args.dry_run:
        dry_run(config, sweep_dir, resumes, points, count)
        return
    if starter:
        say(f"warm starts: each run is a fork of a process that imports {config['program']}'s modules once")
    stop = Stop()
    try:
        start_sweep_folder(config, args.sweep_file, sweep_dir)
        rows = run_sweep(config, name, sweep_dir, count, args.gpus, starter, stop)
    except SweepError as e:  # another agent started this folder from another version of the file
        print(f"sweep.py: error: {args.sweep_file}: {e}", file=sys.stderr)
        sys.exit(2)
    if stop.signal:
        say("interrupted: run the same command again to continue", file=sys.stderr)
        sys.exit(128 + stop.signal)
    if starter:
        starter.close()
    print_table(config, rows)


def dry_run(config, sweep_dir, resumes, points, count):
    """The command lines an invocation would run now, resumes first; stops early if nobody reads them."""
    lines = [shlex.join(command_line(config, run.params, sweep_dir / run.run_id)) for run in resumes]
    lines += [shlex.join(command_line(config, params, sweep_dir / generate_id())) for params in points]
    if not lines:
        say(f"nothing left to run: every grid point has a row or a claim in {sweep_dir}, or run_cap is reached",
            file=sys.stderr)
    if config["method"] != "grid" and points:  # the values are drawn as each run starts: these show the number
        say(f"{config['method']} draws each point as its run starts, so a real invocation's values differ"
            + ("" if count < math.inf or "run_cap" in config else
               "; it never runs out: it starts run after run until stopped, or give --count N"), file=sys.stderr)
    for line in lines:
        if not say(line):
            return


if __name__ == "__main__":
    main()
