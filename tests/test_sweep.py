"""sweep.py and sweeps/: the files W&B accepts, the command lines `wandb agent` builds, and the offline agent
run as a user runs it (a subprocess on tiny digits runs, W&B offline)."""

import csv
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import sweeps
import yaml
from wandb import wandb_agent

from conftest import ROOT, clean_env, inspect_wandb
from conftest import run as run_script

sys.path.insert(0, str(ROOT))
import runfiles  # noqa: E402
import sweep  # noqa: E402
import train  # noqa: E402

SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
LIGHT = ROOT / "tests/light/train.py"  # a train.py that trains nothing: for tests of sweep.py's own work
TINY = {"model": {"value": "resnet10t"}, "img_size": {"value": 16}, "train_samples": {"value": 64},
        "batch_size": {"value": 32}, "epochs": {"value": 1}}


def run(args, cwd, env=None):
    """conftest.run, with the timeout a busy 2-core host needs for a sweep of a few tiny runs."""
    return run_script(args, cwd, env, timeout=900)


def write_sweep(path, parameters, **top):
    """A sweep file for the tiny settings; the program is this checkout's train.py."""
    fixed = {k: v for k, v in {**TINY, **top.pop("fixed", {})}.items() if k not in parameters}
    config = {"program": str(ROOT / "train.py"), "method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
              **top, "parameters": {**parameters, **fixed}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def agent_command(config, run_config, monkeypatch, tmp_path):
    """The argv `wandb agent` runs for one suggested run: its own Agent._command_run, given the run as W&B's server
    sends it, with only the process it would start replaced by a note of that process's command."""
    started = []
    monkeypatch.setattr(wandb_agent, "AgentProcess",
                        lambda command=None, **_: started.append(command) or types.SimpleNamespace())
    for name in ("WANDB_DIR", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH"):  # it sets them: restored after the test
        monkeypatch.setenv(name, str(tmp_path))
    agent = wandb_agent.Agent(api=None, queue=None)
    agent._sweep_command = list(config.get("command") or [])  # as Agent.run() takes it from the sweep's config
    sent = json.loads(json.dumps(run_config, default=lambda v: v.item()))  # the server sends JSON; numpy was ours
    agent._command_run({"run_id": "r1", "program": config["program"], "args": sent})
    [argv] = started
    return argv


def suggestions(config):
    """Every grid point, or a few bayes/random suggestions, as W&B's engine makes them."""
    runs = sweeps.next_runs(config, [], n=1000 if config["method"] == "grid" else 5)
    return [r for r in runs if r is not None]


# ----------------------------------------------------------------------------------------------
# The sweeps/ files

@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_is_a_valid_wandb_sweep_that_says_what_it_asks(path):
    text = path.read_text()
    config = yaml.safe_load(text)
    assert sweeps.schema_violations_from_proposed_config(config) == []
    sweeps.SweepConfig(config)  # fills and validates, as `wandb sweep` does
    assert text.startswith("# ") and "?" in text.split("\nprogram:")[0]  # a header comment asks its question
    assert config["program"] == "train.py" and config["metric"]["name"]


def test_lab1_grids_share_one_config_and_have_the_seeds_their_comparisons_need():
    lab1 = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "sweeps").glob("lab1_*.yaml")}
    for name, config in lab1.items():  # the data and model are set once, in the shared file
        assert config["method"] == "grid" and config["parameters"]["config"] == {"value": "lab1/train_defaults.yaml"}
        assert not {"dataset", "model", "img_size"} & config["parameters"].keys(), name
        assert len(config["parameters"]["seed"]["values"]) >= 3, name
    for name in ("lab1_batch_size", "lab1_groupnorm", "lab1_equal_updates", "lab1_one_epoch"):  # paired headlines
        assert len(lab1[name]["parameters"]["seed"]["values"]) >= 5, name
    grid = lab1["lab1_steps"]["parameters"]["lr_base"]["values"]  # sqrt(2) apart, for a fit in log lr
    assert len(grid) >= 5 and all(abs(b / a - 2 ** 0.5) < 0.02 for a, b in zip(grid, grid[1:], strict=False))
    assert yaml.safe_load((ROOT / "lab1/train_defaults.yaml").read_text())["dataset"] == "digits"
    multi = yaml.safe_load((ROOT / "sweeps/multi_gpu.yaml").read_text())
    assert multi["command"] == ["${env}", "accelerate", "launch", "--multi_gpu", "--num_processes=2",
                                "${program}", "${args}"]


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_train_accepts_the_command_line_wandb_agent_builds(path, monkeypatch, tmp_path):
    config = sweeps.SweepConfig(yaml.safe_load(path.read_text()))
    points = suggestions(config)
    assert points
    for point in points:
        argv = agent_command(config, point.config, monkeypatch, tmp_path)
        args = train.parse_args(argv[argv.index("train.py") + 1:])
        for name, spec in point.config.items():
            expected = train.model_kwargs(spec["value"]) if name == "model_kwargs" else spec["value"]  # a dict
            assert getattr(args, name) == expected, (name, argv)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_py_runs_what_wandb_agent_runs_plus_output_dir(path, monkeypatch, tmp_path):
    config = sweeps.SweepConfig(yaml.safe_load(path.read_text()))
    point = suggestions(config)[0]
    argv = agent_command(config, point.config, monkeypatch, tmp_path)
    expected = [sys.executable if part == "python" else part for part in argv]
    params = {k: v["value"] for k, v in point.config.items()}
    assert sweep.command_line(config, params, "runs/x") == expected + ["--output_dir=runs/x"]


PY = sys.executable  # sweep.py's ${interpreter}: the Python running it (wandb agent's is `python`)


@pytest.mark.parametrize("command, params, expected", [
    (None, {"lr": 0.01, "batch_size": 64, "precise_bn": True},
     ["/usr/bin/env", PY, "train.py", "--lr=0.01", "--batch_size=64", "--precise_bn=True", "--output_dir=runs/x"]),
    (["${env}", "accelerate", "launch", "--multi_gpu", "--num_processes=2", "${program}", "${args}"], {"seed": 0},
     ["/usr/bin/env", "accelerate", "launch", "--multi_gpu", "--num_processes=2", "train.py", "--seed=0",
      "--output_dir=runs/x"]),
    (["${env}", "${interpreter}", "${program}", "${args_no_equals}"], {"lr": 0.1, "optimizer": "sgd"},
     ["/usr/bin/env", PY, "train.py", "--lr", "0.1", "--optimizer", "sgd", "--output_dir", "runs/x"]),
    (["${interpreter}", "${program}", "${args_no_boolean_flags}"], {"precise_bn": False, "noise_scale": True},
     [PY, "train.py", "--noise_scale", "--output_dir=runs/x"]),
    (None, {"wandb_tags": "a b,c", "model_kwargs": "norm_layer=groupnorm1"},
     ["/usr/bin/env", PY, "train.py", "--wandb_tags=a b,c", "--model_kwargs=norm_layer=groupnorm1",
      "--output_dir=runs/x"]),
], ids=["default", "accelerate-launch", "args-no-equals", "no-boolean-flags", "spaces"])
def test_command_lines_as_written_out_by_hand(command, params, expected):
    # Written independently of sweep.py and of W&B's helpers: W&B's docs' forms of `command:`, one flag each.
    config = {"program": "train.py", **({"command": command} if command else {})}
    assert sweep.command_line(config, params, "runs/x") == expected


def test_bayes_learns_from_every_kind_of_ended_run(tmp_path):
    config = sweeps.SweepConfig(yaml.safe_load((ROOT / "sweeps/bayes.yaml").read_text()))
    ended = []
    for i, (status, summary) in enumerate([("finished", {"val/acc": 0.9}), ("diverged", {"val/acc": math.nan}),
                                           ("stopped", {}), ("failed", {})]):
        point = {k: v["value"] for k, v in suggestions(config)[0].config.items()}
        ended.append(sweep.Run(f"r{i}", point, status, 0, summary))
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2/history.csv").write_text("epoch,val/acc\n1,0.5\n")  # a stopped run's metric: its history
    points = sweep.propose(config, ended, 2, tmp_path)
    assert len(points) == 2 and points[0] != points[1]
    assert all(1e-4 <= p["lr"] <= 0.1 and p["batch_size"] in (16, 32, 64, 128, 256) for p in points)


def test_results_cells_read_back_as_the_values_written():
    for value in [16, 1e-05, 0.1, 100.0, 3e-4, True, False, "adamw", "resnet10t"]:
        back = runfiles.parse_cell(str(value))
        assert back == value and type(back) is type(value)


def test_values_written_1e_3_are_numbers_and_every_value_reads_back_from_results_csv(tmp_path):
    # PyYAML reads 1e-3 as the string '1e-3': it never matched the 0.001 read back, so it ran on every invocation
    path = tmp_path / "g.yaml"
    path.write_text(f"program: {ROOT / 'train.py'}\nmethod: grid\nparameters:\n"
                    "  lr: {values: [1e-3, 2.5E-2, 0.1]}\n  seed: {values: [0, 1]}\n  wandb_tags: {value: '1e3'}\n")
    config = sweep.load_sweep(path)
    assert config["parameters"]["lr"]["values"] == [0.001, 0.025, 0.1]
    assert config["parameters"]["wandb_tags"]["value"] == "1e3"  # quoted: a string, as written
    points = sweep.propose(config, [], 100)
    assert len(points) == 6
    sweep.write_results(tmp_path / "results.csv", [sweep.Run(f"r{i}", p, "finished", 0) for i, p in enumerate(points)],
                        list(config["parameters"]))
    back = sweep.read_results(tmp_path / "results.csv", config["parameters"])
    assert [run.params for run in back] == points
    assert sweep.propose(config, back, 100) == []  # nothing left to run


def schema_distributions():
    """Every `distribution:` W&B's sweep engine accepts, from its own JSON schema."""
    def found(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "distribution" and isinstance(value, dict) and "enum" in value:
                    yield from value["enum"]
                else:
                    yield from found(value)
        elif isinstance(node, list):
            for value in node:
                yield from found(value)
    return sorted(set(found(json.loads((Path(sweeps.__file__).parent / "config/schema.json").read_text()))))


# distribution: (a flag that takes every value it can produce, the rest of its spec), tiny and fast as TINY
EVERY_DISTRIBUTION = {
    "constant": ("epochs", {"value": 1}),
    "categorical": ("model", {"values": ["resnet10t"]}),
    "categorical_w_probabilities": ("optimizer", {"values": ["adamw", "sgd"], "probabilities": [0.5, 0.5]}),
    "int_uniform": ("seed", {"min": 0, "max": 9}),
    "uniform": ("label_smoothing", {"min": 0.0, "max": 0.1}),
    "q_uniform": ("batch_size", {"min": 16, "max": 32, "q": 16}),
    "log_uniform_values": ("weight_decay", {"min": 1e-5, "max": 1e-2}),
    "inv_log_uniform_values": ("val_fraction", {"min": 0.1, "max": 0.2}),
    "q_log_uniform_values": ("train_samples", {"min": 64, "max": 128, "q": 32}),  # W&B's docs sweep batch size so
    "beta": ("target_val_acc", {"a": 2, "b": 2}),  # [0, 1], both ends included
    "q_beta": ("clip_grad", {"a": 2, "b": 2, "q": 0.5}),
    # no bound: only a flag that takes any text takes every value these can produce (-inf ... inf)
    "normal": ("run_name", {"mu": 0, "sigma": 1}),
    "q_normal": ("wandb_tags", {"mu": 0, "sigma": 1, "q": 1}),
    "log_normal": ("wandb_group", {"mu": 0, "sigma": 1}),
    "q_log_normal": ("data_dir", {"mu": 0, "sigma": 1, "q": 1}),
}
# The engine's schema lists these, and its own check refuses them (min and max were exponents): so does W&B's server
REFUSED_BY_THE_ENGINE = {"log_uniform": "log_uniform_values", "inv_log_uniform": "inv_log_uniform_values",
                         "q_log_uniform": "q_log_uniform_values"}


@pytest.mark.parametrize("distribution", schema_distributions())
def test_every_distribution_of_the_engine_gives_values_sweep_py_records_and_train_py_takes(distribution, tmp_path):
    if distribution in REFUSED_BY_THE_ENGINE:  # in one line, with the engine's own words
        with pytest.raises(sweep.SweepError, match=f"Use {REFUSED_BY_THE_ENGINE[distribution]} to"):
            sweep.load_sweep(write_sweep(tmp_path / "d.yaml", {"lr": {"distribution": distribution, "min": -9,
                                                                       "max": -5}}, method="random"))
        return
    flag, spec = EVERY_DISTRIBUTION[distribution]  # a distribution the engine adds fails here until it has a row
    config = sweep.load_sweep(write_sweep(tmp_path / "d.yaml", {flag: {"distribution": distribution, **spec}},
                                          method="random"))
    points = sweep.propose(config, [], 20)
    json.dumps(points)  # the claim and results.csv are JSON and text: numpy's int64 (q_* distributions) is neither
    ends = sweep.edge_values(flag, config["parameters"][flag])
    for value in (point[flag] for point in points):
        assert type(value) in (int, float, str, bool)
        if type(value) in (int, float):
            assert min(ends) <= value <= max(ends)
    assert sweep.first_rejected(vars(train), sweep.flag_checks(config, points)) is None  # what check_flags runs
    sweep.write_results(tmp_path / "results.csv", [sweep.Run(f"r{i}", p, "finished", 0) for i, p in enumerate(points)],
                        list(config["parameters"]))
    back = sweep.read_results(tmp_path / "results.csv", config["parameters"])
    assert [run.params for run in back] == points


@pytest.mark.parametrize("flag, spec, words", [
    ("lr", {"distribution": "uniform", "min": 0.0, "max": 0.1}, "--lr=0.0"),  # lr > 0; one sample is never 0
    ("lr", {"distribution": "normal", "mu": 0.01, "sigma": 0.001}, "--lr=-inf"),  # no bound, in either direction
    ("weight_decay", {"distribution": "log_normal", "mu": -5, "sigma": 1}, "--weight_decay=inf"),
    ("seed", {"distribution": "q_normal", "mu": 5, "sigma": 1, "q": 1}, "--seed=-inf"),
    ("batch_size", {"distribution": "q_log_uniform_values", "min": 16, "max": 64, "q": 16.0}, "--batch_size=16.0"),
    ("label_smoothing", {"distribution": "beta", "a": 2, "b": 2}, "--label_smoothing=1.0"),  # [0, 1)
    ("img_size", {"distribution": "int_uniform", "min": 4, "max": 32}, "--img_size=4"),
], ids=["uniform-min", "normal", "log_normal", "q_normal", "float-q", "beta-max", "int_uniform-min"])
def test_a_distribution_that_can_produce_a_value_train_py_refuses_is_refused_at_its_ends(flag, spec, words, tmp_path):
    config = sweep.load_sweep(write_sweep(tmp_path / "d.yaml", {flag: spec}, method="random"))
    message = sweep.first_rejected(vars(train), sweep.flag_checks(config, []))  # the ends alone: not the sample's
    assert words in message and "(values at the ends of the sweep's distributions)" in message


@pytest.mark.slow
def test_a_sweep_of_every_distribution_runs(workdir):
    parameters = {flag: {"distribution": name, **spec} for name, (flag, spec) in EVERY_DISTRIBUTION.items()}
    write_sweep(workdir / "all.yaml", parameters, method="random")
    res = run([str(ROOT / "sweep.py"), "all.yaml", "--count", "1"], cwd=workdir, env=clean_env(HOME=str(workdir)))
    assert res.returncode == 0, res.stdout + res.stderr
    [row] = read_csv(workdir / "runs/sweeps/all/results.csv")
    assert row["status"] == "finished" and float(row["test/acc"]) > 0
    config = json.loads((workdir / "runs/sweeps/all" / row["run_id"] / "config.json").read_text())
    assert {flag: str(config[flag]) for flag in parameters} == {flag: row[flag] for flag in parameters}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_file_passes_sweep_py_checks_and_starts_warm_unless_it_has_a_command(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # program: train.py
    config = sweep.load_sweep(path.relative_to(ROOT))  # (the flags: test_train_accepts_the_command_line_...)
    assert sweep.warm_program(config) == (None if "command" in config else "train.py")  # accelerate launch: cold


def test_an_edited_sweep_file_is_refused_and_a_reformatted_one_is_the_same_sweep(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    path = write_sweep(workdir / "tiny.yaml", {"lr": {"values": [0.1, 0.01]}}, program=str(LIGHT))
    sweep_dir = workdir / "runs/sweeps/tiny"
    sweep.start_sweep_folder(sweep.load_sweep(path), path, sweep_dir)  # what an agent does before its first run
    assert (sweep_dir / "sweep.yaml").read_text() == path.read_text()
    config = yaml.safe_load(path.read_text())

    path.write_text("# a comment, and the keys in another order\n" + yaml.safe_dump(config, sort_keys=True))
    sweep.main(["tiny.yaml", "--dry_run"])  # the same sweep: it goes on
    assert len(capsys.readouterr().out.splitlines()) == 2

    for key, value in [("epochs", {"value": 2}), ("command", ["${env}", "${interpreter}", "${program}", "${args}",
                                                              "--seed=1"])]:
        path.write_text(yaml.safe_dump({**config, key: value} if key == "command"
                                       else {**config, "parameters": {**config["parameters"], key: value}}))
        listing = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
        with pytest.raises(SystemExit) as stop:
            sweep.main(["tiny.yaml"])
        out, err = capsys.readouterr()
        assert stop.value.code == 2 and out == "" and len(err.splitlines()) == 1
        assert ("parameters.epochs" if key == "epochs" else "command") in err and "--sweep_dir" in err
        assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == listing  # nothing written
    # the edited file, elsewhere: checked as sweep.main checks it
    sweep.check_same_sweep(sweep.load_sweep(path), path, workdir / "runs/sweeps/tiny_seed1")

    # The same sweep file naming a --config file: editing that file changes every run, so it is refused too
    (workdir / "defaults.yaml").write_text("img_size: 16\n")
    path.write_text(yaml.safe_dump({**config, "parameters": {**config["parameters"],
                                                             "config": {"value": "defaults.yaml"}}}))
    sweep.start_sweep_folder(sweep.load_sweep(path), path, workdir / "runs/sweeps/defaults")
    sweep.check_same_sweep(sweep.load_sweep(path), path, workdir / "runs/sweeps/defaults")  # unchanged: goes on
    (workdir / "defaults.yaml").write_text("# digits, small\nimg_size:   16  # pixels\n")  # the same for train.py
    sweep.main(["tiny.yaml", "--dry_run", "--sweep_dir=runs/sweeps/defaults"])
    assert len(capsys.readouterr().out.splitlines()) == 2
    (workdir / "defaults.yaml").write_text("img_size: 32\n")
    with pytest.raises(SystemExit) as stop:
        sweep.main(["tiny.yaml", "--dry_run", "--sweep_dir=runs/sweeps/defaults"])
    assert stop.value.code == 2 and "config file defaults.yaml" in capsys.readouterr().err

    (sweep_dir / "sweep.yaml").unlink()  # a folder of an older sweep.py, which kept no copy of its file
    (sweep_dir / "results.csv").write_text("run_id,status,exit_code,lr\nabc,finished,0,0.1\n")
    with pytest.raises(SystemExit):
        sweep.main(["tiny.yaml", "--dry_run"])
    assert "copy it to runs/sweeps/tiny/sweep.yaml" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# The offline agent

def wait_for(condition, agent, seconds=600):
    """Poll until condition() holds; fail if the agent ends first, or after `seconds` (generous: a busy 2-core host
    can take minutes over what takes seconds on a quiet one)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert (agent is None or agent.poll() is None) and time.monotonic() < deadline, \
            agent.communicate()[0] if agent else "timed out"
        time.sleep(0.1)


def run_dirs(sweep_dir):
    """The run folders, oldest first (not claims/)."""
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name != sweep.CLAIMS),
                  key=lambda p: p.stat().st_mtime)


@pytest.mark.slow
def test_grid_sweep_records_every_point_once_across_a_sigkill(workdir):
    # Point 1 fails (no MNIST in the folder: exit 2); point 2 is training when the agent is SIGKILLed: it saves a
    # checkpoint, and the next invocation resumes it.
    (workdir / "data").mkdir()
    write_sweep(workdir / "tiny.yaml", {"dataset": {"values": ["mnist", "digits"]}},
                fixed={"lr": {"value": 0.003}, "epochs": {"value": 6},
                       "target_val_acc": {"value": 0.5}})  # so target/* is logged, lab1_steps's metric
    sweep_dir = workdir / "runs/sweeps/tiny"
    env = clean_env(HOME=str(workdir), WANDB_MODE="online")  # the agent must force offline itself
    agent = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "tiny.yaml"], cwd=workdir, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (sweep_dir / "results.csv").exists() and len(run_dirs(sweep_dir)) == 2
             and (run_dirs(sweep_dir)[1] / "history.csv").exists(), agent)
    agent.kill()  # SIGKILL: no `finally`, no chance to write anything
    assert agent.wait(timeout=600) == -signal.SIGKILL
    first = read_csv(sweep_dir / "results.csv")
    assert [(r["dataset"], r["status"], r["exit_code"]) for r in first] == [("mnist", "failed", "2")]
    assert "mnist" in agent.stdout.read()  # the failure's line, with train.py's reason
    # The kernel sent the orphaned run SIGTERM (PR_SET_PDEATHSIG): it stopped after a step, not at its end, and
    # held the claim it inherited until it had saved its checkpoint and ended.
    orphan = run_dirs(sweep_dir)[1]
    wait_for(lambda: not claim_held(sweep_dir / sweep.CLAIMS / f"{orphan.name}.json"), None)
    assert json.loads((orphan / "summary.json").read_text())["status"] == "preempted"

    dry = run([str(ROOT / "sweep.py"), "tiny.yaml", "--dry_run"], cwd=workdir, env=env)
    assert dry.returncode == 0 and len(dry.stdout.splitlines()) == 1 and "--dataset=digits" in dry.stdout
    assert f"--output_dir=runs/sweeps/tiny/{orphan.name}" in dry.stdout  # resumed, not run again from scratch

    res = run([str(ROOT / "sweep.py"), "tiny.yaml"], cwd=workdir, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = read_csv(sweep_dir / "results.csv")
    assert [(r["dataset"], r["status"]) for r in rows] == [("mnist", "failed"), ("digits", "finished")]
    header = list(rows[0])
    params = ["dataset", *TINY, "lr", "target_val_acc"]  # YAML order
    assert header[:3 + len(params)] == ["run_id", "status", "exit_code", *params]
    assert header[3 + len(params):] == sorted(header[3 + len(params):]) and "test/acc" in header
    table = res.stdout.split("sorted by val/acc (maximize):\n")[1].splitlines()
    assert [line.split()[0] for line in table] == [rows[1]["run_id"], rows[0]["run_id"]]  # failed (no metric) last

    done = sweep_dir / rows[1]["run_id"]
    config = json.loads((done / "config.json").read_text())
    assert config["output_dir"] == f"runs/sweeps/tiny/{rows[1]['run_id']}"
    summary = json.loads((done / "summary.json").read_text())
    recorded = inspect_wandb(summary["wandb_run_dir"])  # offline, under the sweep's run id
    assert recorded["run_id"] == rows[1]["run_id"] and recorded["config"]["dataset"] == "digits"
    assert rows[1]["run_id"] == orphan.name and "resuming" in (done / "train.log").read_text()
    assert {p.name for p in run_dirs(sweep_dir)} == {r["run_id"] for r in rows}  # no folder without a row
    assert list((sweep_dir / sweep.CLAIMS).iterdir()) == []  # the killed agent's claim was taken back
    assert "warm starts" in res.stdout  # the runs were forks of the warm-start process

    logged = set(read_csv(done / "history.csv")[0]) | set(summary)
    for path in SWEEP_FILES:  # every sweeps/ metric is a key train.py logs; Hyperband's, every epoch
        config = yaml.safe_load(path.read_text())
        assert config["metric"]["name"] in logged, path.name
        if "early_terminate" in config:
            assert config["metric"]["name"] in read_csv(done / "history.csv")[0], path.name


def claim_held(path):
    """Whether an agent, or a run it started, still holds the claim's flock."""
    try:
        with path.open() as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True


def stop_once_training(workdir, sig):
    """Start sweep.py on one.yaml (a tests/warm/train.py sweep), send it `sig` twice: the first as its run logs its
    first point (sent by the run itself, which goes on once the agent has passed it on: a run of a few updates can
    otherwise finish before a test sees the point), the second once the run has started saving its checkpoint, so
    in the agent's shutdown (a job's second SIGTERM, a second Ctrl-C). -> (sweep folder, env without the signal)."""
    sweep_dir = workdir / "runs/sweeps/one"
    env = clean_env(HOME=str(workdir))
    agent = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "one.yaml"], cwd=workdir,
                             env={**env, "SIGNAL_AGENT_AFTER": "history.csv", "SIGNAL_AGENT_WITH": sig.name},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: sweep_dir.exists() and run_dirs(sweep_dir) and (run_dirs(sweep_dir)[0] / "history.csv").exists(),
             agent)
    run_dir = run_dirs(sweep_dir)[0]
    wait_for(lambda: {"checkpoint.tmp", "checkpoint"} & {p.name for p in run_dir.iterdir()}, None)
    agent.send_signal(sig)
    assert agent.wait(timeout=600) == 128 + sig, agent.stdout.read()
    return sweep_dir, env


@pytest.mark.slow
def test_sigterm_preempts_the_running_run_and_the_next_invocation_resumes_it(workdir):
    write_sweep(workdir / "one.yaml", {"seed": {"values": [0]}}, program=str(ROOT / "tests/warm/train.py"),
                fixed={"epochs": {"value": 6}})
    sweep_dir, env = stop_once_training(workdir, signal.SIGTERM)  # as a cluster ends a job: the agent passes it on
    [row] = read_csv(sweep_dir / "results.csv")
    assert (row["status"], row["exit_code"]) == ("preempted", str(128 + signal.SIGTERM))
    assert (sweep_dir / row["run_id"] / "checkpoint/progress.json").exists()

    # Two agents at once on the sweep: one resumes the run, the other finds it claimed and nothing else to do.
    agents = [subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "one.yaml"], cwd=workdir, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [agent.communicate(timeout=900)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], outputs
    [done] = read_csv(sweep_dir / "results.csv")
    assert (done["run_id"], done["status"]) == (row["run_id"], "finished")  # the same run, resumed
    log = (sweep_dir / row["run_id"] / "train.log").read_text()
    assert "preempted" in log and log.count("resuming") == 1
    assert [h["epoch"] for h in runfiles.read_history(sweep_dir / row["run_id"] / "history.csv")] == \
        list(map(float, range(1, 7)))  # resumed once: no epoch twice


@pytest.mark.slow
def test_hyperband_stops_a_run_that_falls_behind(workdir):
    # Metric `train/lr` (logged at every point; the cosine schedule scales both runs alike) ranks the runs before they
    # train: run 2 is certain to be behind run 1 at epoch 1, and with eta 3 Hyperband keeps only the top third.
    write_sweep(workdir / "hb.yaml", {"lr": {"values": [0.1, 0.001]}}, metric={"name": "train/lr", "goal": "maximize"},
                early_terminate={"type": "hyperband", "min_iter": 1, "eta": 3},
                fixed={"epochs": {"value": 8}})
    res = run([str(ROOT / "sweep.py"), "hb.yaml"], cwd=workdir, env=clean_env(HOME=str(workdir)))
    assert res.returncode == 0, res.stdout + res.stderr
    rows = read_csv(workdir / "runs/sweeps/hb/results.csv")
    assert [(r["lr"], r["status"]) for r in rows] == [("0.1", "finished"), ("0.001", "stopped")]
    assert int(rows[1]["exit_code"]) in (-signal.SIGTERM, 128 + signal.SIGTERM)  # in start-up, or training
    assert len(read_csv(workdir / "runs/sweeps/hb" / rows[0]["run_id"] / "history.csv")) == 8
    assert len(read_csv(workdir / "runs/sweeps/hb" / rows[1]["run_id"] / "history.csv")) < 8
    stopped = workdir / "runs/sweeps/hb" / rows[1]["run_id"]
    assert json.loads((stopped / "summary.json").read_text())["status"] == "stopped"  # as in results.csv
    assert not (stopped / "checkpoint").exists()  # it ended for good: nothing to resume, 57 MB less


@pytest.mark.slow
def test_a_crash_or_os_exit_in_a_warm_run_leaves_the_next_run_and_the_agent_unaffected(workdir):
    write_sweep(workdir / "crash.yaml", {"model": {"values": ["raises", "exits", "resnet10t"]}},
                program=str(ROOT / "tests/warm/train.py"))
    res = run([str(ROOT / "sweep.py"), "crash.yaml"], cwd=workdir, env=clean_env(HOME=str(workdir)))
    assert res.returncode == 0, res.stdout + res.stderr
    sweep_dir = workdir / "runs/sweeps/crash"
    rows = read_csv(sweep_dir / "results.csv")
    assert [(r["model"], r["status"], r["exit_code"]) for r in rows] == [
        ("raises", "failed", "1"), ("exits", "failed", "3"), ("resnet10t", "finished", "0")]
    logs = [(sweep_dir / r["run_id"] / "train.log").read_text() for r in rows]
    assert all(log.startswith("warm start: True\n") for log in logs)  # forks of a process that imported torch
    assert "RuntimeError: a bug in the model (test)" in logs[0] and "[RuntimeError: a bug" in res.stdout
    done = json.loads((sweep_dir / rows[2]["run_id"] / "summary.json").read_text())
    assert done["status"] == "finished" and done["test/acc"] > 0
    recorded = inspect_wandb(done["wandb_run_dir"])  # its own W&B run, whole, after a neighbour died without one
    assert recorded["run_id"] == rows[2]["run_id"] and recorded["summary"]["status"] == "finished"


@pytest.mark.slow
def test_two_agents_on_one_grid_run_each_point_once(workdir):
    # Started together on a 4-point grid; the lr values are written 1e-3 (read back as numbers, not rerun).
    write_sweep(workdir / "grid.yaml", {"seed": {"values": [0, 1]}})
    (workdir / "grid.yaml").write_text((workdir / "grid.yaml").read_text() + "  lr:\n    values: [1e-3, 2e-3]\n")
    env = clean_env(HOME=str(workdir))
    agents = [subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "grid.yaml"], cwd=workdir, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [agent.communicate(timeout=900)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], outputs
    sweep_dir = workdir / "runs/sweeps/grid"
    rows = read_csv(sweep_dir / "results.csv")
    assert sorted((r["seed"], r["lr"], r["status"]) for r in rows) == [
        ("0", "0.001", "finished"), ("0", "0.002", "finished"), ("1", "0.001", "finished"), ("1", "0.002", "finished")]
    assert sorted(p.name for p in run_dirs(sweep_dir)) == sorted(r["run_id"] for r in rows)  # no point ran twice
    dry = run([str(ROOT / "sweep.py"), "grid.yaml", "--dry_run"], cwd=workdir, env=env)
    assert dry.returncode == 0 and dry.stdout == "" and "nothing left to run" in dry.stderr


@pytest.mark.slow
def test_a_resume_that_crashes_is_failed_not_resumed_for_ever(workdir):
    write_sweep(workdir / "one.yaml", {"seed": {"values": [0]}}, program=str(ROOT / "tests/warm/train.py"),
                fixed={"model": {"value": "resnet_fails_on_resume"}, "epochs": {"value": 6}})
    sweep_dir, env = stop_once_training(workdir, signal.SIGINT)  # two quick Ctrl-Cs
    [row] = read_csv(sweep_dir / "results.csv")
    assert row["status"] == "preempted"  # and its summary.json says so, until a resume ends another way

    for _ in range(2):  # the first resumes it and it crashes; the second finds nothing to do
        res = run([str(ROOT / "sweep.py"), "one.yaml"], cwd=workdir, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        [after] = read_csv(sweep_dir / "results.csv")
        assert (after["run_id"], after["status"], after["exit_code"]) == (row["run_id"], "failed", "1")
    log = (sweep_dir / row["run_id"] / "train.log").read_text()
    assert log.count("RuntimeError: a bug in the model (test)") == 1


LRS = {"lr": {"values": [0.1, 0.01, 0.001]}}
DRAWN = {"lr": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.1}}


@pytest.mark.parametrize("parameters, top, argv, rows, expected", [
    (LRS, {}, [], [], ["0.1", "0.01", "0.001"]),
    (LRS, {}, ["--count=2"], [], ["0.1", "0.01"]),
    (LRS, {"run_cap": 2}, [], [], ["0.1", "0.01"]),
    (LRS, {"run_cap": 3}, [], [("a1", "finished", 0.01)], ["0.1", "0.001"]),  # the cap counts every run
    (LRS, {}, ["--count=1"], [("a1", "preempted", 0.01)], ["a1", "0.1"]),  # resumes first; --count is new runs
    (LRS, {}, [], [("a1", "finished", 0.1), ("a2", "finished", 0.01), ("a3", "failed", 0.001)], []),
    (DRAWN, {"method": "random"}, ["--count=3"], [], ["drawn"] * 3),
    (DRAWN, {"method": "random", "run_cap": 4}, [], [("a1", "finished", 0.01)], ["drawn"] * 3),
    (DRAWN, {"method": "random"}, [], [], ["drawn"]),  # never runs out: the first, and a word on stderr
    (LRS, {}, [], "stale claim", ["c1", "0.1", "0.001"]),  # an agent SIGKILLed after its run saved a checkpoint
], ids=["grid", "count", "run-cap", "run-cap-counts-rows", "resume-first", "nothing-left", "random-count",
        "random-run-cap", "random-unbounded", "stale-claim"])
def test_dry_run_prints_what_an_invocation_would_run_and_writes_nothing(parameters, top, argv, rows, expected,
                                                                        workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    path = write_sweep(workdir / "tiny.yaml", parameters, program=str(LIGHT), **top)
    sweep_dir = workdir / "runs/sweeps/tiny"
    sweep.start_sweep_folder(sweep.load_sweep(path), path, sweep_dir)
    if rows == "stale claim":  # its claim's lock is free, and its folder has a checkpoint
        (sweep_dir / "claims").mkdir()
        (sweep_dir / "claims/c1.json").write_text(json.dumps({"run_id": "c1", "params": {"lr": 0.01}}))
        (sweep_dir / "c1/checkpoint").mkdir(parents=True)
        (sweep_dir / "c1/checkpoint/progress.json").write_text("{}")
    else:
        sweep.write_results(sweep_dir / "results.csv", [sweep.Run(i, {"lr": lr}, status, 0) for i, status, lr in rows],
                            ["lr"])
    listing = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    sweep.main(["tiny.yaml", "--dry_run", *argv])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == len(expected)
    for line, want in zip(lines, expected, strict=True):
        lr, output_dir = (line.split(f" --{name}=")[1].split()[0] for name in ("lr", "output_dir"))
        if want == "drawn":
            assert 0.001 <= float(lr) <= 0.1
        elif want.startswith(("a", "c")):  # a resume: the same run id and folder
            assert output_dir == f"runs/sweeps/tiny/{want}"
        else:
            assert lr == want
    assert ("never runs out" in err) == (expected == ["drawn"] and "--count=3" not in argv and "run_cap" not in top)
    assert ("nothing left to run" in err) == (expected == [])
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == listing  # wrote nothing


@pytest.mark.parametrize("summary, checkpoint, exit_code, stop_sent, expected", [
    ("finished", False, 0, False, "finished"),
    ("finished", False, -signal.SIGTERM, False, "finished"),  # SIGTERM in the interpreter's teardown
    ("finished", False, -signal.SIGKILL, False, "finished"),  # SIGKILL after its summary.json (a grace period)
    ("finished", False, 1, False, "finished"),  # an error after summary.json, in W&B's finish
    ("diverged", False, 0, False, "diverged"),
    ("preempted", True, 128 + signal.SIGTERM, False, "preempted"),
    (None, True, -signal.SIGTERM, False, "preempted"),  # a resume signalled in start-up: its earlier checkpoint
    ("earlier preempted", True, 1, False, "failed"),  # a resume that crashed before replacing its part's summary
    (None, False, -signal.SIGTERM, False, "failed"),  # cut off in start-up, nothing saved
    (None, False, 0, False, "failed"),  # no summary.json
    ("preempted", True, 128 + signal.SIGTERM, True, "stopped"),  # Hyperband's SIGTERM
    ("finished", False, 0, True, "finished"),  # Hyperband's SIGTERM came as it finished
], ids=["finished", "sigterm-in-teardown", "sigkill-after-summary", "error-after-summary", "diverged", "preempted",
        "signal-in-resume-start-up", "resume-crashed", "cut-in-start-up", "no-summary", "hyperband", "hyperband-late"])
def test_a_run_is_recorded_as_its_files_say_whatever_its_exit_code(summary, checkpoint, exit_code, stop_sent,
                                                                    expected, tmp_path):
    run_dir = tmp_path / "r1"
    (run_dir / "checkpoint").mkdir(parents=True)
    if checkpoint:
        (run_dir / "checkpoint/progress.json").write_text("{}")
    run = sweep.Run("r1", {"lr": 0.1}, stop_sent=1.0 if stop_sent else None,
                    proc=types.SimpleNamespace(returncode=exit_code))  # how the run's process ended
    if summary:
        runfiles.write_json(run_dir / "summary.json", {"status": summary.split()[-1], "val/acc": 0.5})
    if summary == "earlier preempted":  # there when the run started
        run.stale = sweep.fingerprint(run_dir / "summary.json")
    sweep.record(run, tmp_path)
    assert (run.status, run.exit_code) == (expected, exit_code)
    assert run.summary == ({"val/acc": 0.5} if summary and expected != "failed" else {})


@pytest.mark.slow
@pytest.mark.parametrize("after", ["history.csv", "summary.json"])
def test_a_sigterm_after_the_run_trained_its_last_point_still_records_it(workdir, after):
    # After its last history row the run evaluates the test split, then writes summary.json, then finishes its W&B
    # run and exits: the agent's SIGTERM, sent by the run itself right after it wrote `after` (tests/warm/train.py),
    # lands in what follows, or after the run ended; the row is `finished`.
    write_sweep(workdir / "one.yaml", {"seed": {"values": [0]}}, program=str(ROOT / "tests/warm/train.py"))
    sweep_dir = workdir / "runs/sweeps/one"
    agent = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "one.yaml"], cwd=workdir,
                             env=clean_env(HOME=str(workdir), SIGNAL_AGENT_AFTER=after), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    assert agent.wait(timeout=600) == 128 + signal.SIGTERM, agent.stdout.read()
    [row] = read_csv(sweep_dir / "results.csv")
    summary = json.loads((sweep_dir / row["run_id"] / "summary.json").read_text())
    assert row["status"] == summary["status"] == "finished" and float(row["test/acc"]) > 0
    assert inspect_wandb(summary["wandb_run_dir"])["summary"]["status"] == "finished"  # W&B's finish completed


@pytest.mark.parametrize("gpus, command, words", [
    ("x", None, "give GPU indices"),
    ("0,", None, "give GPU indices"),
    ("0,,1", None, "give GPU indices"),
    ("0:", None, "give GPU indices"),
    ("-1", None, "give GPU indices"),
    ("0;1", None, "give GPU indices"),
    ("0,1:1,2", None, "GPU 1 is given twice"),
    ("0:0", None, "GPU 0 is given twice"),
    ("0,1,2,3", "multi_gpu", "needs 2 GPUs"),  # accelerate launch --num_processes=2 on one GPU each
    ("0,1,2:3,4,5", "multi_gpu", "needs 2 GPUs"),
], ids=["text", "empty-id", "empty-id-inside", "empty-group", "negative", "semicolon", "gpu-in-two-groups",
        "group-twice", "one-gpu-for-two-processes", "three-gpus-for-two-processes"])
def test_bad_gpus_is_one_line_exit_2_before_anything_starts(gpus, command, words, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    multi = ["${env}", "accelerate", "launch", "--multi_gpu", "--num_processes=2", "${program}", "${args}"]
    write_sweep(workdir / "tiny.yaml", {"seed": {"values": [0, 1]}}, program=str(LIGHT),
                **({"command": multi} if command else {}))
    for argv in (["tiny.yaml", f"--gpus={gpus}"], ["tiny.yaml", f"--gpus={gpus}", "--dry_run"]):
        with pytest.raises(SystemExit) as stop:
            sweep.main(argv)
        out, err = capsys.readouterr()
        assert stop.value.code == 2 and out == "" and len(err.splitlines()) == 1 and words in err
    assert [p.name for p in workdir.iterdir()] == ["tiny.yaml"]


def test_gpus_are_one_run_per_gpu_or_one_per_group():
    assert sweep.gpu_groups("0,1,2,3,4,5,6,7") == ["0", "1", "2", "3", "4", "5", "6", "7"]
    assert sweep.gpu_groups("0,1:2,3:4,5:6,7") == ["0,1", "2,3", "4,5", "6,7"]
    assert sweep.gpu_groups("GPU-8f6e1c2a-1b2c:GPU-0a1b2c3d-4e5f") == ["GPU-8f6e1c2a-1b2c", "GPU-0a1b2c3d-4e5f"]


@pytest.mark.slow
def test_gpu_groups_give_each_run_its_own_group_and_never_one_group_to_two_runs(workdir):
    # tests/light/train.py holds its group (a file only one run can make) until the test releases the run.
    (workdir / "held").mkdir()
    write_sweep(workdir / "g.yaml", {"seed": {"values": [0, 1, 2, 3]}}, program=str(LIGHT),
                fixed={"hold": {"value": str(workdir / "held")}})
    sweep_dir = workdir / "runs/sweeps/g"
    agent = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "g.yaml", "--gpus=0,1:2,3"], cwd=workdir,
                             env=clean_env(HOME=str(workdir)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)

    def started():
        return {path.parent.name: path.read_text() for path in sweep_dir.glob("*/started")}

    wait_for(lambda: len(started()) == 2, agent)
    first = started()
    assert sorted(first.values()) == ["0,1", "2,3"]  # one run per group, at once
    freed = sorted(first)[0]
    (sweep_dir / freed / "release").touch()
    wait_for(lambda: len(started()) == 3, agent)
    [third] = set(started()) - set(first)
    assert started()[third] == first[freed]  # the group that came free, while the other is still held

    def release_every_run():
        for run_id in started():
            (sweep_dir / run_id / "release").touch()
        return agent.poll() is not None

    wait_for(release_every_run, None)
    assert agent.wait() == 0, agent.stdout.read()
    rows = read_csv(sweep_dir / "results.csv")
    assert [row["status"] for row in rows] == ["finished"] * 4  # none found its group held (that exits 3)
    assert {row["gpus"] for row in rows} == {"0,1", "2,3"}


@pytest.mark.parametrize("case", ["under-a-file", "read-only-disk", "no-permission"])
def test_a_sweep_dir_that_cannot_be_made_is_one_line_exit_2_before_anything_starts(case, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    write_sweep(workdir / "tiny.yaml", {"seed": {"values": [0]}}, program=str(LIGHT))
    (workdir / "afile").write_text("")
    (workdir / "shut").mkdir()
    if case == "read-only-disk":
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", "shut"], capture_output=True)
        if mount.returncode:
            pytest.skip("mounting a read-only disk needs root (the no-permission case runs instead)")
    elif case == "no-permission":
        if os.geteuid() == 0:
            pytest.skip("root may write in any folder (the read-only-disk case runs instead)")
        (workdir / "shut").chmod(0o500)
    words = {"under-a-file": "afile is a file", "read-only-disk": "is on a read-only disk",
             "no-permission": "is not yours to write"}[case]
    target = "afile/sweeps/tiny" if case == "under-a-file" else "shut/sweeps/tiny"
    try:
        listing = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
        for argv in (["tiny.yaml", f"--sweep_dir={target}"], ["tiny.yaml", f"--sweep_dir={target}", "--dry_run"]):
            with pytest.raises(SystemExit) as stop:
                sweep.main(argv)
            out, err = capsys.readouterr()
            assert stop.value.code == 2 and out == "" and len(err.splitlines()) == 1
            assert words in err and "give another --sweep_dir" in err
        assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == listing  # no wandb/, no runs/
    finally:
        if case == "read-only-disk":
            subprocess.run(["umount", "-l", str(workdir / "shut")], check=False)


@pytest.mark.parametrize("argv, points", [(["--dry_run"], 2000), (["--cold_start"], 3)], ids=["dry-run", "sweep"])
def test_output_cut_short_is_no_error(argv, points, workdir):
    # `sweep.py ... | head -1`: the reader leaves after a line; the dry run stops, the sweep goes on, neither with a
    # traceback. 2,000 command lines are more than a pipe holds.
    write_sweep(workdir / "big.yaml", {"seed": {"values": list(range(points))}}, program=str(LIGHT))
    agent = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "big.yaml", *argv], cwd=workdir,
                             env=clean_env(HOME=str(workdir)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    assert agent.stdout.readline()
    agent.stdout.close()
    err = agent.stderr.read()
    assert agent.wait(timeout=600) == 0 and "Traceback" not in err and "Error" not in err, err
    if not argv:
        assert [row["status"] for row in read_csv(workdir / "runs/sweeps/big/results.csv")] == ["finished"] * 3


def test_a_large_grid_is_computed_by_the_engine_once_and_its_taken_points_skipped(tmp_path):
    # sweep.py used to ask the engine for each point of a plan, and the engine computed the whole grid each time
    # (bench/sweep_scale.py measures it): the engine now computes it once an agent.
    config = sweep.load_sweep(write_sweep(tmp_path / "g.yaml", {"seed": {"values": list(range(250))},
                                                                 "lr": {"values": [0.1, 0.01, 0.001, 0.2]}}))
    points = sweep.propose(config, [], math.inf)
    assert len({json.dumps(point, sort_keys=True) for point in points}) == len(points) == 1000
    taken = [sweep.Run(f"r{i}", point, "finished", 0) for i, point in enumerate(points[::2])]
    sweep.write_results(tmp_path / "results.csv", taken, list(config["parameters"]))
    rows = sweep.read_results(tmp_path / "results.csv", config["parameters"])
    assert sweep.propose(config, rows, math.inf) == points[1::2]
    assert sweep.propose(config, rows, 3) == points[1:6:2]
    assert points == [{k: v["value"] for k, v in run.config.items()}  # the engine's own order, skipping none
                      for run in sweeps.next_runs(config, [], n=1000)]


GRID = "program: PROGRAM\nmethod: grid\nparameters: {lr: {values: [0.1]}}\n"


def command(*last):
    """A command: block, the default one's first three macros, then `last`."""
    return "command:\n" + "".join(f"  - {chunk}\n" for chunk in ("${env}", "${interpreter}", "${program}", *last))


@pytest.mark.parametrize("text, words", [
    ("method: grid\nparameters: [lr", "expected"),  # not YAML
    ("program: PROGRAM\nmethod: grdi\nparameters: {lr: {values: [0.1]}}", "not a valid W&B sweep"),
    pytest.param("program: PROGRAM\nmethod: grid\nparameters: {learning_rate: {values: [0.1]}}",
                 "unrecognized arguments", marks=pytest.mark.slow),  # these two start train.py's imports: 20 s
    pytest.param("program: PROGRAM\nmethod: grid\nparameters: {lr: {values: [0.1, fast]}}", "expected a number > 0",
                 marks=pytest.mark.slow),
    ("program: no_such.py\nmethod: grid\nparameters: {lr: {values: [0.1]}}", "not found"),
    ("program: PROGRAM\nmethod: grid\nparameters: [lr, batch_size]", "parameters: must map"),
    (GRID + "early_terminate: {type: hyperband, min_iter: 1, eta: 3}", 'requires "metric"'),
    ("program: PROGRAM\nmethod: bayes\nparameters: {lr: {min: 0.001, max: 0.1}}", "metric"),
    (GRID.replace("PROGRAM", "FAILING"), "sweep.py runs a train.py"),
    (GRID.replace("PROGRAM", "NO_MAIN"), "has no main or parse_args()"),
    (GRID + command("${args_json}"), "${args_json} is not a form of flags"),
    (GRID + command("${args_no_hyphens}"), "${args_no_hyphens} is not a form of flags"),
    (GRID + command("--lr=0.1"), "has 0 ${args}"),
    (GRID + command("${args}", "--lr=0.5"), "--lr=0.5 after ${args} overrides"),
    (GRID + command("${args}", "--output_dir=elsewhere"), "--output_dir=elsewhere after ${args}"),
    (GRID + "parameters: {lr: {values: [0.2]}}", "key 'parameters' is given twice"),  # PyYAML keeps the last
    ("program: PROGRAM\nmethod: grid\nparameters:\n  lr: {values: [0.1]}\n  lr: {values: [0.2]}\n",
     "key 'lr' is given twice"),
    (GRID + "metric: {name: val/accuracy, goal: maximize}", "never logs 'val/accuracy'"),  # bayes would learn nothing
    (GRID + "command:\n  - ${env}\n  - no_such_launcher\n  - ${program}\n  - ${args}\n",
     "'no_such_launcher' is not a program"),
    ("program: PROGRAM\nmethod: grid\nparameters: {1: {values: [0.1]}}", "1 is not a flag name"),  # AssertionError
    ("program: PROGRAM\nmethod: grid\nparameters: {output_dir: {value: out}}", "output_dir is sweep.py's to set"),
    pytest.param("program: PROGRAM\nmethod: random\nparameters: {lr: {distribution: normal, mu: 0.01, sigma: 0.001}}",
                 "rejects `--lr=-inf` (values at the ends of the sweep's distributions)", marks=pytest.mark.slow),
], ids=["not-yaml", "not-a-sweep", "unknown-parameter", "bad-value", "no-program", "parameters-list",
        "hyperband-no-metric", "bayes-no-metric", "not-train-py", "no-main", "args-json", "args-no-hyphens",
        "no-args", "flag-after-args", "output-dir-after-args", "key-twice", "parameter-twice", "metric-not-logged",
        "no-such-command", "integer-parameter", "output-dir-parameter", "normal-lr"])
def test_bad_sweep_is_one_line_exit_2_before_any_run(workdir, monkeypatch, capsys, request, text, words):
    # NO_MAIN: a train.py whose top level writes a file: checking the sweep must not run it
    (workdir / "lib").mkdir()
    (workdir / "lib/train.py").write_text("open('ran', 'w')\n")
    (workdir / "bad.yaml").write_text(text.replace("PROGRAM", str(ROOT / "train.py"))
                                      .replace("FAILING", str(ROOT / "tests/failing_model.py"))
                                      .replace("NO_MAIN", str(workdir / "lib/train.py")))
    monkeypatch.chdir(workdir)
    for argv in (["bad.yaml"], ["bad.yaml", "--dry_run"]):  # --dry_run makes the same checks
        with pytest.raises(SystemExit) as stop:
            sweep.main(argv)
        out, err = capsys.readouterr()
        assert stop.value.code == 2 and out == ""
        assert len(err.splitlines()) == 1 and err.startswith("sweep.py: error: bad.yaml:") and words in err
    assert sorted(p.name for p in workdir.iterdir()) == ["bad.yaml", "lib"]  # no runs/, no wandb/, no `ran`
    # and as a command, once for each stage of the checks (a process of its own costs 2.5 s)
    if request.node.callspec.id in ("not-yaml", "no-main", "hyperband-no-metric", "output-dir-after-args",
                                    "no-such-command"):
        res = run([str(ROOT / "sweep.py"), "bad.yaml"], cwd=workdir, env=clean_env(HOME=str(workdir)))
        assert (res.returncode, res.stdout, res.stderr) == (2, "", err)
