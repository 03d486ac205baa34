"""sweep.py and sweeps/: the files W&B accepts, the command lines `wandb agent` builds, and the offline agent
run as a user runs it (a subprocess on tiny digits runs, W&B offline)."""

import csv
import json
import math
import signal
import subprocess
import sys
import time

import pytest
import sweeps
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from conftest import ROOT, clean_env, inspect_wandb, run

sys.path.insert(0, str(ROOT))
import runfiles  # noqa: E402
import sweep  # noqa: E402
import train  # noqa: E402

SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
TINY = {"model": {"value": "resnet10t"}, "img_size": {"value": 16}, "train_samples": {"value": 64},
        "batch_size": {"value": 32}, "epochs": {"value": 1}}


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


def agent_command(config, run_config):
    """The argv `wandb agent` runs for one suggested run (wandb_agent.py, Agent._command_run), from W&B's own
    helpers: env and interpreter as on Linux, every parameter as --name=value."""
    macros = create_sweep_command_args({"args": run_config})
    macros.update(env=["/usr/bin/env"], interpreter=["python"], program=[config["program"]])
    argv = []
    for chunk in create_sweep_command(list(config.get("command", []))):
        argv += (macros.get(chunk[2:-1]) or []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
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
def test_train_accepts_the_command_line_wandb_agent_builds(path):
    config = sweeps.SweepConfig(yaml.safe_load(path.read_text()))
    points = suggestions(config)
    assert points
    for point in points:
        argv = agent_command(config, point.config)
        args = train.parse_args(argv[argv.index("train.py") + 1:])
        for name, spec in point.config.items():
            expected = train.model_kwargs(spec["value"]) if name == "model_kwargs" else spec["value"]  # a dict
            assert getattr(args, name) == expected, (name, argv)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_py_runs_what_wandb_agent_runs_plus_output_dir(path):
    config = sweeps.SweepConfig(yaml.safe_load(path.read_text()))
    point = suggestions(config)[0]
    expected = [sys.executable if part == "python" else part for part in agent_command(config, point.config)]
    params = {k: v["value"] for k, v in point.config.items()}
    assert sweep.command_line(config, params, "runs/x") == expected + ["--output_dir=runs/x"]


def test_bayes_learns_from_every_kind_of_ended_run(tmp_path):
    config = sweeps.SweepConfig(yaml.safe_load((ROOT / "sweeps/bayes.yaml").read_text()))
    ended = []
    for i, (status, summary) in enumerate([("finished", {"val/acc": 0.9}), ("diverged", {"val/acc": math.nan}),
                                           ("stopped", {}), ("failed", {})]):
        point = {k: v["value"] for k, v in suggestions(config)[0].config.items()}
        ended.append(sweep.Run(f"r{i}", point, status, 0, summary))
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2/history.csv").write_text("epoch,val/acc\n1,0.5\n")  # a stopped run's metric: its history
    points = sweep.propose(config, [run.sweep_run(tmp_path) for run in ended], 2)
    assert len(points) == 2 and points[0] != points[1]
    assert all(1e-4 <= p["lr"] <= 0.1 and p["batch_size"] in (16, 32, 64, 128, 256) for p in points)


def test_results_cells_read_back_as_the_values_written():
    for value in [16, 1e-05, 0.1, 100.0, 3e-4, True, False, "adamw", "resnet10t"]:
        back = sweep.parse_cell(str(value))
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
    assert sweep.propose(config, [run.sweep_run(tmp_path) for run in back], 100) == []  # nothing left to run


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_file_passes_sweep_py_checks_and_starts_warm_unless_it_has_a_command(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # program: train.py
    config = sweep.load_sweep(path.relative_to(ROOT))  # (the flags: test_train_accepts_the_command_line_...)
    assert sweep.warm_program(config) == (None if "command" in config else "train.py")  # accelerate launch: cold


def test_an_edited_sweep_file_is_refused_and_a_reformatted_one_is_the_same_sweep(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    path = write_sweep(workdir / "tiny.yaml", {"lr": {"values": [0.1, 0.01]}})
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
    # the edited file, elsewhere: checked as sweep.main checks it (the whole dry run above takes 5 s, most of it
    # the flag check's imports)
    sweep.check_same_sweep(sweep.load_sweep(path), path, workdir / "runs/sweeps/tiny_seed1")

    # The same sweep file naming a --config file: editing that file changes every run, so it is refused too
    (workdir / "defaults.yaml").write_text("img_size: 16\n")
    path.write_text(yaml.safe_dump({**config, "parameters": {**config["parameters"],
                                                             "config": {"value": "defaults.yaml"}}}))
    sweep.start_sweep_folder(sweep.load_sweep(path), path, workdir / "runs/sweeps/defaults")
    sweep.check_same_sweep(sweep.load_sweep(path), path, workdir / "runs/sweeps/defaults")  # unchanged: goes on
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

def wait_for(condition, agent, seconds=120):
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
    # Point 1 fails (no MNIST in the folder: exit 2); point 2 is training when the agent is SIGKILLed, then is redone.
    (workdir / "data").mkdir()
    write_sweep(workdir / "tiny.yaml", {"dataset": {"values": ["mnist", "digits"]}},
                fixed={"lr": {"value": 0.003}, "epochs": {"value": 20},
                       "target_val_acc": {"value": 0.5}})  # so target/* is logged, lab1_steps's metric
    sweep_dir = workdir / "runs/sweeps/tiny"
    env = clean_env(HOME=str(workdir), WANDB_MODE="online")  # the agent must force offline itself
    agent = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "tiny.yaml"], cwd=workdir, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (sweep_dir / "results.csv").exists() and len(run_dirs(sweep_dir)) == 2
             and (run_dirs(sweep_dir)[1] / "history.csv").exists(), agent)
    agent.kill()  # SIGKILL: no `finally`, no chance to write anything
    assert agent.wait(timeout=30) == -signal.SIGKILL
    first = read_csv(sweep_dir / "results.csv")
    assert [(r["dataset"], r["status"], r["exit_code"]) for r in first] == [("mnist", "failed", "2")]
    assert "mnist" in agent.stdout.read()  # the failure's line, with train.py's reason
    # The kernel sent the orphaned run SIGTERM (PR_SET_PDEATHSIG): it stopped after a step, not at its end.
    orphan = run_dirs(sweep_dir)[1]
    wait_for(lambda: (orphan / "summary.json").exists(), None, 60)
    assert json.loads((orphan / "summary.json").read_text())["status"] == "preempted"

    dry = run([str(ROOT / "sweep.py"), "tiny.yaml", "--dry_run"], cwd=workdir, env=env)
    assert dry.returncode == 0 and len(dry.stdout.splitlines()) == 1 and "--dataset=digits" in dry.stdout

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
    cut = {p.name for p in run_dirs(sweep_dir)} - {r["run_id"] for r in rows}
    assert cut == {orphan.name}  # done again as a new run; the cut one keeps its folder, with no row
    assert list((sweep_dir / sweep.CLAIMS).iterdir()) == []  # the killed agent's claim was taken back
    assert "warm starts" in res.stdout  # the runs were forks of the warm-start process

    logged = set(read_csv(done / "history.csv")[0]) | set(summary)
    for path in SWEEP_FILES:  # every sweeps/ metric is a key train.py logs; Hyperband's, every epoch
        config = yaml.safe_load(path.read_text())
        assert config["metric"]["name"] in logged, path.name
        if "early_terminate" in config:
            assert config["metric"]["name"] in read_csv(done / "history.csv")[0], path.name


def sigterm_once_training(workdir):
    """Start sweep.py on one.yaml, SIGTERM it once its run has logged a point; -> (sweep folder, env)."""
    sweep_dir = workdir / "runs/sweeps/one"
    env = clean_env(HOME=str(workdir))
    agent = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "one.yaml"], cwd=workdir, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: sweep_dir.exists() and run_dirs(sweep_dir) and (run_dirs(sweep_dir)[0] / "history.csv").exists(),
             agent)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=60) == 128 + signal.SIGTERM
    return sweep_dir, env


@pytest.mark.slow
def test_sigterm_preempts_the_running_run_and_the_next_invocation_resumes_it(workdir):
    write_sweep(workdir / "one.yaml", {"seed": {"values": [0]}}, fixed={"epochs": {"value": 20}})
    sweep_dir, env = sigterm_once_training(workdir)  # as a cluster ends a job: the agent passes it on
    [row] = read_csv(sweep_dir / "results.csv")
    assert (row["status"], row["exit_code"]) == ("preempted", str(128 + signal.SIGTERM))
    assert (sweep_dir / row["run_id"] / "checkpoint/progress.json").exists()

    # Two agents at once on the sweep: one resumes the run, the other finds it claimed and nothing else to do.
    agents = [subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "one.yaml"], cwd=workdir, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [agent.communicate(timeout=240)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], outputs
    [done] = read_csv(sweep_dir / "results.csv")
    assert (done["run_id"], done["status"]) == (row["run_id"], "finished")  # the same run, resumed
    log = (sweep_dir / row["run_id"] / "train.log").read_text()
    assert "preempted" in log and log.count("resuming") == 1
    assert [h["epoch"] for h in runfiles.read_history(sweep_dir / row["run_id"] / "history.csv")] == \
        list(map(float, range(1, 21)))  # resumed once: no epoch twice


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
    outputs = [agent.communicate(timeout=300)[0] for agent in agents]
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
                fixed={"model": {"value": "resnet_fails_on_resume"}, "epochs": {"value": 20}})
    sweep_dir, env = sigterm_once_training(workdir)
    [row] = read_csv(sweep_dir / "results.csv")
    assert row["status"] == "preempted"  # and its summary.json says so, until a resume ends another way

    for _ in range(2):  # the first resumes it and it crashes; the second finds nothing to do
        res = run([str(ROOT / "sweep.py"), "one.yaml"], cwd=workdir, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        [after] = read_csv(sweep_dir / "results.csv")
        assert (after["run_id"], after["status"], after["exit_code"]) == (row["run_id"], "failed", "1")
    log = (sweep_dir / row["run_id"] / "train.log").read_text()
    assert log.count("RuntimeError: a bug in the model (test)") == 1


@pytest.mark.slow
def test_dry_run_prints_the_remaining_command_lines_and_writes_nothing(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    write_sweep(workdir / "tiny.yaml", {"lr": {"values": [0.1, 0.01, 0.001]}})
    sweep.main(["tiny.yaml", "--dry_run"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("--lr=")[1].split()[0] for line in lines] == ["0.1", "0.01", "0.001"]
    assert all(" --output_dir=runs/sweeps/tiny/" in line for line in lines)
    sweep.main(["tiny.yaml", "--dry_run", "--count", "2"])
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.yaml"]


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
], ids=["not-yaml", "not-a-sweep", "unknown-parameter", "bad-value", "no-program", "parameters-list",
        "hyperband-no-metric", "bayes-no-metric", "not-train-py", "no-main", "args-json", "args-no-hyphens",
        "no-args", "flag-after-args", "output-dir-after-args"])
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
    if request.node.callspec.id in ("not-yaml", "no-main", "hyperband-no-metric", "output-dir-after-args"):
        res = run([str(ROOT / "sweep.py"), "bad.yaml"], cwd=workdir, env=clean_env(HOME=str(workdir)))
        assert (res.returncode, res.stdout, res.stderr) == (2, "", err)
