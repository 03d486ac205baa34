"""What a new user meets (issue 22): results that were silently wrong, one table per kind of crash, and the
messages a user misreads. train.py runs as a user runs it (a subprocess, or main() in-process for refusals),
W&B offline."""

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import PATIENCE, ROOT, TINY, clean_env, inspect_wandb, run, signalled, summary_of, train_many

sys.path.insert(0, str(ROOT))
import runfiles  # noqa: E402
import train  # noqa: E402

QUIET = ["--wandb_mode=disabled"]


def refused_in_process(argv, cwd, capsys):
    """train.main(argv) in this process: -> its one line on stderr, after checking it refused as bad input is
    refused (exit 2, one line, no traceback) and wrote nothing (no output folder, no wandb/)."""
    before = sorted(p.name for p in cwd.iterdir())
    with pytest.raises(SystemExit) as exit:
        train.main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith("train.py: error: ") and err.count("\n") == 1, err
    assert sorted(p.name for p in cwd.iterdir()) == before, err
    return err


# ----------------------------------------------------------------------------------------------
# Results that were silently wrong

def test_pretrained_path_without_pretrained_is_refused(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    (workdir / "w.pth").write_bytes(b"")
    err = refused_in_process([*TINY, "--pretrained_path=w.pth", "--output_dir=out"], workdir, capsys)
    assert "--pretrained_path w.pth is read only with --pretrained" in err


def test_peak_memory_is_the_same_warm_and_cold(workdir):
    # sweep.py's warm start runs each run in a fork of a process that imported train.py: the kernel does not
    # copy a parent's file-backed page tables, so the child's peak RSS lacks the library code the parent had
    # mapped (619 MB against 907 MB). memory/peak_mb must mean the same however the run starts.
    flags = [*TINY, "--epochs=1", *QUIET]
    cold = run([str(ROOT / "train.py"), *flags, "--output_dir=cold"], cwd=workdir)
    assert cold.returncode == 0, cold.stderr[-2000:]
    warm_code = ("import json, os, sys, train\npid = os.fork()\nif pid == 0:\n"
                 "    train.main(json.loads(sys.argv[1]))\n    os._exit(0)\n"
                 "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n")
    warm = subprocess.run([sys.executable, "-c", warm_code, json.dumps([*flags, "--output_dir=warm"])], cwd=workdir,
                          env=dict(clean_env(), PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=PATIENCE)
    assert warm.returncode == 0, warm.stderr[-2000:]
    a, b = (summary_of(workdir / side)["memory/peak_mb"] for side in ("cold", "warm"))
    assert b == pytest.approx(a, rel=0.05), (a, b)
    assert 100 < a < 4000  # MB: the libraries' own data, the digits, the model and its activations


@pytest.mark.slow
def test_launcher_settings_the_readme_names_are_the_ones_that_apply(workdir):
    # accelerate launch passes --gradient_accumulation_steps on only under DeepSpeed (accelerate/utils/launch.py):
    # a plain `accelerate launch --gradient_accumulation_steps 2` trains with 1, so the README must not say it applies.
    readme = " ".join((ROOT / "README.md").read_text().split())
    claim = re.search(r"left unset take what `accelerate launch`[^.]*\.", readme)
    assert claim, "the README's sentence on launcher settings"
    few = ["--img_size=8", "--train_samples=64", "--batch_size=16", "--epochs=1", "--val_fraction=0.02",
           "--test_fraction=0.02", *QUIET]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes=1", "--num_machines=1",
              "--mixed_precision=no", "--dynamo_backend=no", "--gradient_accumulation_steps=2"]
    res = subprocess.run([*launch, str(ROOT / "train.py"), *few, "--output_dir=launched"], cwd=workdir,
                         env=clean_env(), capture_output=True, text=True, timeout=PATIENCE)
    assert res.returncode == 0, res.stderr[-3000:]
    config = json.loads((workdir / "launched/config.json").read_text())
    if config["grad_accum_steps"] != 2:
        assert "--grad_accum_steps" not in claim.group(0), claim.group(0)
    # what the DeepSpeed launcher sets (ACCELERATE_GRADIENT_ACCUMULATION_STEPS) does apply, where the README says
    res = run([str(ROOT / "train.py"), *few, "--output_dir=deepspeed_env"], cwd=workdir,
              env=clean_env(ACCELERATE_GRADIENT_ACCUMULATION_STEPS="2"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((workdir / "deepspeed_env/config.json").read_text())["grad_accum_steps"] == 2
    assert "DeepSpeed" in readme[readme.index(claim.group(0)):][:600]


COUNT_COMPILES = """
import json, sys, torch._dynamo.utils, train
def graphs():
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]  # graphs dynamo has compiled so far
def counted(method, deltas):
    def wrapper(self, *args, **kwargs):
        before = graphs()
        try:
            return method(self, *args, **kwargs)
        finally:
            deltas.append(graphs() - before)
    return wrapper
steps, first = [], []
train.Training.train_step = counted(train.Training.train_step, steps)
train.Training.compile_first = counted(train.Training.compile_first, first)
train.main(sys.argv[1:])
print(json.dumps({"steps": steps, "first": first}))
"""


@pytest.mark.slow
def test_compilation_is_kept_out_of_training_time(workdir):
    # aot_eager compiles through dynamo and AOTAutograd as inductor does, without generating code: seconds, not
    # minutes. What `accelerate launch --dynamo_backend aot_eager` sets, as --compile would ask for inductor.
    env = dict(clean_env(ACCELERATE_DYNAMO_BACKEND="aot_eager"), PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", COUNT_COMPILES, *TINY, *QUIET, "--output_dir=out"], cwd=workdir,
                         env=env, capture_output=True, text=True, timeout=PATIENCE)
    assert res.returncode == 0, res.stderr[-3000:]
    compiled = json.loads(res.stdout.strip().splitlines()[-1])
    # the training graph is compiled once, before the first timed step (the step that calls compile_first holds
    # it), and no timed training step compiles anything
    assert compiled["first"][0] >= 1 and compiled["steps"] == [compiled["first"][0]] + [0] * 7, compiled
    s = summary_of(workdir / "out")
    assert json.loads((workdir / "out/config.json").read_text())["compile"] is True
    for key, value in s.items():  # every metric is defined: nothing NaN in a finished run
        assert not (isinstance(value, float) and math.isnan(value)), key
    assert s["time/compile_s"] > 0 and s["memory/activations_mb"] > 0
    assert s["throughput/train_img_s"] == pytest.approx(s["examples"] / s["time/train_s"])


@pytest.mark.slow
def test_a_wandb_agent_requeue_resumes_in_the_folder_of_its_run_id(workdir):
    # wandb agent sets WANDB_RUN_ID and gives flags only: its requeue is the same environment, the same command
    env = clean_env(HOME=str(workdir), WANDB_MODE="offline", WANDB_RUN_ID="agentrun1")
    argv = [*TINY, "--epochs=3"]
    stopped = signalled(argv, workdir, env, "TERM", "evaluation_point")  # after update 4: it stops after update 5
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    out = workdir / "runs/agentrun1"
    assert runfiles.has_checkpoint(out)
    s = summary_of(out)
    assert (s["status"], s["update"], s["examples"]) == ("preempted", 5, 5 * 32)  # every image it trained
    hint = stopped.stdout[stopped.stdout.index("preempted:"):].splitlines()[0]
    assert "run the same command" in hint, hint

    res = run([str(ROOT / "train.py"), *argv], cwd=workdir, env=env)  # the agent's requeue
    assert res.returncode == 0 and "resuming" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    assert [p.name for p in (workdir / "runs").iterdir()] == ["agentrun1"]
    s = summary_of(out)
    assert (s["status"], s["update"], s["examples"]) == ("finished", 12, 12 * 32)
    assert inspect_wandb(s["wandb_run_dir"])["run_id"] == "agentrun1"
    # history.csv keeps its whole numbers whole after a resume (8, not 8.0)
    with (out / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["update"] for r in rows] == ["4", "8", "12"] and [r["examples"] for r in rows] == ["128", "256", "384"]


@pytest.mark.slow
def test_the_resume_hint_of_a_run_without_an_output_dir_resumes_it(workdir):
    env = clean_env(HOME=str(workdir), WANDB_MODE="offline")
    stopped = signalled([*TINY, "--epochs=3"], workdir, env, "TERM", "evaluation_point")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    hint = stopped.stdout[stopped.stdout.index("preempted:"):].splitlines()[0]
    # `python train.py` names its folder after its W&B run: the same command alone starts a new run
    given = re.search(r"--output_dir[= ](\S+)", hint)
    assert given, hint
    res = run([str(ROOT / "train.py"), *TINY, "--epochs=3", f"--output_dir={given.group(1)}"], cwd=workdir, env=env)
    assert res.returncode == 0 and "resuming" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    assert summary_of(workdir / given.group(1))["status"] == "finished"


# ----------------------------------------------------------------------------------------------
# Crashes, by category: each a table

def sweep_points():
    """One tiny point for each combination of flags a file in sweeps/ gives train.py: its own keys, each at its
    first value, made small (digits, 64 images, batch 16, 1 epoch or 2 updates)."""
    tiny = {"batch_size": 16, "epochs": 1, "max_updates": 2, "train_samples": 64, "dataset": "digits",
            "model": "resnet10t", "img_size": 16, "download": False, "config": str(ROOT / "lab1/train_defaults.yaml")}
    points = {}
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        params = yaml.safe_load(path.read_text())["parameters"]
        point = {k: tiny.get(k, p["values"][0] if "values" in p else p.get("value", p.get("min")))
                 for k, p in params.items()}
        point.setdefault("train_samples", 64)
        if "max_updates" not in point:
            point["epochs"] = 1
        points.setdefault(tuple(sorted(params)), (path.stem, point))
    return dict(points.values())


@pytest.mark.slow
def test_any_run_reruns_from_its_own_config_json_or_wandb_config_yaml(workdir):
    points = sweep_points()
    assert {"lab1_steps", "lab1_noise_scale", "multi_gpu"} <= set(points)
    assert any("lr_base" in point for point in points.values())  # its reruns were refused: give --lr or --lr_base
    # one process for each mixed precision: Accelerate keeps its first for the life of a process
    precisions = {name: p.get("mixed_precision", "no") for name, p in points.items()}
    env = clean_env(HOME=str(workdir), WANDB_MODE="offline")
    from wandb.sdk.lib.config_util import save_config_file_from_dict
    for precision in set(precisions.values()):
        names = [name for name in points if precisions[name] == precision]
        res = train_many([[f"--{k}={v}" for k, v in points[name].items()] + [f"--output_dir={name}"]
                          for name in names], workdir, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        reruns = []
        for name in names:
            recorded = inspect_wandb(summary_of(workdir / name)["wandb_run_dir"])["config"]
            save_config_file_from_dict(str(workdir / f"{name}.yaml"),  # W&B's config.yaml, by W&B's own writer
                                       {k: {"desc": None, "value": v} for k, v in recorded.items()})
            reruns += [["--config", f"{name}/config.json", f"--output_dir={name}_json"],
                       ["--config", f"{name}.yaml", f"--output_dir={name}_yaml"]]
        res = train_many(reruns, workdir, env=clean_env(WANDB_MODE="disabled"))
        assert res.returncode == 0, res.stderr[-3000:]
    skip = {"config", "output_dir", "wandb_mode", "git_dirty", "data_path_why"}  # the last quotes the free RAM
    for name in points:
        original = json.loads((workdir / name / "config.json").read_text())
        for copy in ("json", "yaml"):
            rerun = json.loads((workdir / f"{name}_{copy}" / "config.json").read_text())
            differ = {k for k in original.keys() | rerun.keys() if k not in skip and original.get(k) != rerun.get(k)}
            assert not differ, (name, copy, {k: (original.get(k), rerun.get(k)) for k in differ})
            # ran to its end: multi_gpu's point (bf16, lr 0.4) ended with a NaN at random on oneDNN's AMX kernels,
            # which train.py no longer uses on the CPU (bench/amx.py)
            assert summary_of(workdir / f"{name}_{copy}")["status"] in ("finished", "reached_target")


def test_a_config_that_names_a_finished_folder_says_how_to_run_elsewhere(workdir):
    res = train_many([[*TINY, "--epochs=1", *QUIET, "--output_dir=first"], ["--config", "first/config.json"]],
                     workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    said = res.stderr.strip().splitlines()[-1]
    assert "output_dir first" in said and "--config first/config.json" in said and "--output_dir" in said, said
    assert [p.name for p in workdir.iterdir()] == ["first"]


def as_nobody(command, folder):
    """The command as a user without root's power over file permissions (in a user namespace, as root)."""
    return ["unshare", "--user", *command] if os.geteuid() == 0 else command


def on_read_only_disk(command, folder):
    """The command with folder/ro a read-only mount (a tmpfs in a mount namespace of its own)."""
    (folder / "ro").mkdir(exist_ok=True)
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
            'mount -t tmpfs -o ro none "$0" && exec "$@"', str(folder / "ro"), *command]


# (case, how to make it, where the run writes, the command wrapper, words of the one line)
PATHS = [
    ("under a file", lambda d: (d / "a_file").write_text(""), ["--output_dir=a_file/out"], None, "a_file is a file"),
    ("is a file", lambda d: (d / "a_file").write_text(""), ["--output_dir=a_file"], None, "a_file is a file"),
    ("default under a file", lambda d: (d / "runs").write_text(""), [], None, "runs is a file"),
    ("no permission", lambda d: (d / "locked").mkdir(mode=0o555), ["--output_dir=locked/out"], as_nobody,
     "locked is not writable"),
    ("read-only disk", None, ["--output_dir=ro/out"], on_read_only_disk, "ro is on a read-only disk"),
    ("name too long", None, ["--run_name=" + "r" * 300], None, "is too long"),
]


@pytest.mark.parametrize("case, make, flags, wrap, words", PATHS, ids=[p[0] for p in PATHS])
def test_an_output_dir_that_cannot_be_made_is_one_line_before_wandb(monkeypatch, capsys, case, make, flags, wrap,
                                                                    words):
    with tempfile.TemporaryDirectory(prefix="newuser-") as tmp:
        d = Path(tmp)
        os.chmod(d, 0o755)  # a user without root's power over permissions can reach it
        if wrap and subprocess.run(wrap(["true"], d), capture_output=True).returncode != 0:
            pytest.skip("user namespaces are not available here")
        if make:
            make(d)
        argv = [*TINY, "--wandb_mode=offline", *flags]
        if not wrap:  # in this process: cheaper
            monkeypatch.chdir(d)
            assert words in refused_in_process(argv, d, capsys)
            return
        before = sorted(p.name for p in d.iterdir())
        res = subprocess.run(wrap([sys.executable, str(ROOT / "train.py"), *argv], d), cwd=d,
                             env=clean_env(HOME=str(d)), capture_output=True, text=True, timeout=PATIENCE)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
        assert words in res.stderr, res.stderr
        assert sorted(p.name for p in d.iterdir()) == before  # no wandb/, no runs/


def test_check_output_dir_takes_what_can_be_made(tmp_path):
    for ok in (tmp_path, tmp_path / "new/deeper", tmp_path / ("r" * 200)):
        train.check_output_dir(ok)
    (tmp_path / "f").write_text("")
    for bad in (tmp_path / "f", tmp_path / "f/out", tmp_path / ("r" * 300)):
        with pytest.raises(train.ConfigError):
            train.check_output_dir(bad)


# (flags at the edge of what their types hold, the words of the one line)
EDGES = [
    (["--seed=4294967296"], "--seed: expected a whole number in [0, 4294967295]"),  # numpy's seeds are 32-bit
    (["--seed=18446744073709551616"], "--seed: expected a whole number in [0, 4294967295]"),
    (["--seed=1e3"], "--seed: expected a whole number"),
    (["--batch_size=1"], "batch norm cannot train on 1 image per process"),  # resnet10t's last maps are 1x1
    (["--batch_size=1", "--grad_accum_steps=4"], "batch norm cannot train on 1 image per process"),
    (["--batch_size=99999999999999999999999"], "is larger than the 64 training images"),
    (["--img_size=99999999999999999999999"], "--img_size: expected a whole number in [8, "),
    (["--num_workers=99999999999999999999999"], "--num_workers: expected a whole number in [0, "),
]


@pytest.mark.parametrize("flags, words", EDGES, ids=[" ".join(f) for f, _ in EDGES])
def test_values_at_the_edge_of_their_types_are_one_line_before_anything_starts(workdir, monkeypatch, capsys,
                                                                              flags, words):
    monkeypatch.chdir(workdir)
    err = refused_in_process(["--train_samples=64", "--output_dir=out", "--wandb_mode=offline", *flags], workdir,
                             capsys)
    assert words in err


def test_a_sweep_file_given_as_config_says_what_runs_it(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    err = refused_in_process(["--config", str(ROOT / "sweeps/lab1_lr.yaml"), "--output_dir=out"], workdir, capsys)
    assert "is a W&B sweep file" in err and "sweep.py" in err


def test_wandb_online_without_an_api_key_is_one_line_before_anything_starts(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    err = refused_in_process([*TINY, "--wandb_mode=online", "--output_dir=out"], workdir, capsys)
    assert "wandb login" in err and "--wandb_mode offline" in err


def test_the_edges_themselves_are_taken(tmp_path):
    assert train.parse_args(["--seed=4294967295"]).seed == 2**32 - 1
    args = train.parse_args(["--batch_size=1", "--model_kwargs=norm_layer=groupnorm1"])
    train.create_model(args, 10, in_chans=1)  # no batch norm: one image a batch trains


def test_output_cut_short_ends_only_the_output(workdir):
    # `python train.py | head -1`: the reader goes away after the first point; the run goes on to its end
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *TINY, "--output_dir=out"], cwd=workdir,
                            env=clean_env(HOME=str(workdir)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for line in proc.stdout:
        if "val/acc=" in line:
            break
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=PATIENCE) == 0 and "Traceback" not in err and "Error" not in err, err[-3000:]
    s = summary_of(workdir / "out")
    assert s["status"] == "finished" and inspect_wandb(s["wandb_run_dir"])["state"] == "finished"


# ----------------------------------------------------------------------------------------------
# Messages a user misreads

def test_fp16_on_the_cpu_suggests_what_runs_well_there(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    err = refused_in_process(["--mixed_precision=fp16", "--output_dir=out"], workdir, capsys)
    assert "use --mixed_precision no" in err and "slower" in err  # bf16 runs on a CPU, several times slower


@pytest.mark.slow
def test_a_warmup_longer_than_the_run_says_so(workdir):
    res = train_many([[*TINY, *QUIET, "--warmup_epochs=3", "--output_dir=long"],
                      [*TINY, *QUIET, "--warmup_epochs=1", "--output_dir=short"]], workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    notes = [line for line in (res.stdout + res.stderr).splitlines() if "--warmup_epochs" in line]
    assert len(notes) == 1 and "--warmup_epochs 3" in notes[0] and "2 epochs" in notes[0], notes
    peak = json.loads((workdir / "long/config.json").read_text())["lr"]
    reached = max(float(r["train/lr"]) for r in csv.DictReader((workdir / "long/history.csv").open()))
    assert reached < peak  # what the note is about


def test_help_shows_each_default_once_and_plain_choices(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: )" not in text and "{," not in text
    for block in re.split(r" (?=--\w+ )", text)[1:]:
        assert block.count("default") <= 2, block  # "(default: X)", once, and at most a mention of it


def test_help_answers_before_torch_timm_and_wandb_are_imported():
    code = ("import runpy, sys\nsys.argv = ['train.py', '--help']\ntry:\n"
            f"    runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('timm', 'wandb', 'accelerate') if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                         timeout=PATIENCE)
    assert res.returncode == 0 and "--batch_size" in res.stdout, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_the_offline_fallback_leaves_one_run_folder_and_ends_with_the_result(workdir):
    env = clean_env(HOME=str(workdir), WANDB_API_KEY="feedface" * 5, WANDB_BASE_URL="http://127.0.0.1:9",
                    WANDB_INIT_TIMEOUT="5")
    env.pop("WANDB_SILENT")  # what a user sees
    res = run([str(ROOT / "train.py"), *TINY, "--epochs=1", "--output_dir=out"], cwd=workdir, env=env)
    assert res.returncode == 0 and "cannot reach W&B" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    offline = Path(summary_of(workdir / "out")["wandb_run_dir"]).name
    assert [p.name for p in (workdir / "wandb").glob("*run-*")] == [offline]
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert lines[-1].startswith(("finished:", "note:")), res.stdout[-2000:]  # nothing of W&B's after the result
    fallback = next(i for i, line in enumerate(lines) if "cannot reach W&B" in line)
    assert not [line for line in lines[fallback:] if "Find logs at" in line], res.stdout[-2000:]
