"""train.py as a user runs it: a subprocess on the digits data, with W&B offline."""

import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, clean_env, inspect_wandb, run, summary_of, train_many, unlisted_keys

sys.path.insert(0, str(ROOT))
import train  # noqa: E402

POINT_KEYS = ["epoch", "update", "examples", "train/loss", "train/acc", "train/lr", "val/loss", "val/acc",
              "time/train_s", "throughput/train_img_s"]
FINAL_KEYS = ["status", "test/loss", "test/acc", "val/acc", "val/acc_final", "val/loss", "val/loss_final",
              "time/train_s", "time/eval_s", "time/precise_bn_s", "time/startup_s", "memory/peak_mb",
              "memory/activations_mb", "epoch", "update", "examples"]


def read_history(out):
    with open(out / "history.csv") as f:
        return list(csv.DictReader(f))


def test_default_offline_run_is_recorded_in_wandb_and_output_dir(workdir):
    res = run([str(ROOT / "train.py"), *TINY, "--lr=0.003", "--output_dir=out"], cwd=workdir,
              env=clean_env(HOME=str(workdir)))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "offline" in res.stdout and "wandb sync" in res.stdout  # says where the run is and how to upload it
    summary = json.loads((workdir / "out/summary.json").read_text())
    assert summary["status"] == "finished"
    assert all(k in summary for k in FINAL_KEYS)
    assert 0 <= summary["test/acc"] <= 1 and summary["test/loss"] > 0
    assert summary["memory/peak_mb"] > 50 and summary["time/train_s"] > 0

    recorded = inspect_wandb(summary["wandb_run_dir"])
    assert recorded["state"] == "finished" and recorded["project"] == "lab1"
    if (ROOT / ".git").exists():  # a checkout: its commit; else (a source archive) unknown
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        assert recorded["config"]["git_commit"] == head and recorded["config"]["git_dirty"] in (True, False)
    else:
        assert recorded["config"]["git_commit"] == recorded["config"]["git_dirty"] == ""
    assert recorded["config"]["batch_size"] == 32 and recorded["config"]["lr"] == 0.003
    # a CPU run keeps freed blocks in malloc's heap, unless the user tuned glibc's malloc themselves
    assert recorded["config"]["keep_freed_memory"] is not any(k.startswith("MALLOC_") for k in os.environ)
    assert recorded["config"]["global_batch_size"] == 32 and recorded["config"]["num_processes"] == 1
    assert {"torch", "timm", "accelerate", "wandb", "device"} <= set(recorded["config"])
    s = recorded["summary"]
    assert s["test/acc"] == pytest.approx(summary["test/acc"]) and s["status"] == "finished"
    # define_metric: the summary keeps the best validation values, not the last; the last is kept apart
    assert s["val/acc"]["max"] == pytest.approx(summary["val/acc"])
    assert s["val/loss"]["min"] == pytest.approx(summary["val/loss"])
    assert s["val/acc_final"] == pytest.approx(summary["val/acc_final"]) and "lr" not in s
    assert "test/confusion_matrix_table" in s and not unlisted_keys(workdir / "out", s)

    rows = read_history(workdir / "out")
    assert [float(r["epoch"]) for r in rows] == [1.0, 2.0] and [int(r["update"]) for r in rows] == [4, 8]
    assert [int(r["examples"]) for r in rows] == [128, 256]
    assert list(rows[0]) == POINT_KEYS
    assert max(float(r["val/acc"]) for r in rows) == pytest.approx(summary["val/acc"])
    assert float(rows[-1]["val/acc"]) == pytest.approx(summary["val/acc_final"])
    lrs = [float(r["train/lr"]) for r in rows]
    assert 0 < lrs[1] < lrs[0] < 0.003  # cosine: the lr of each point's last update, below the peak
    assert float(rows[-1]["time/train_s"]) == pytest.approx(summary["time/train_s"])
    assert json.loads((workdir / "out/config.json").read_text())["train_size"] == 128


def test_agent_style_arguments():
    a = train.parse_args(["--batch_size=16", "--lr", "0.01", "--pretrained=False", "--download", "true",
                          "--noise_scale=1", "--grad_accum_steps=2", "--cpu"])
    assert (a.batch_size, a.lr, a.pretrained, a.download, a.noise_scale, a.cpu) == (16, 0.01, False, True, True, True)
    for text, value in [("True", True), ("false", False), ("0", False), ("1", True)]:
        assert train.parse_args([f"--pretrained={text}"]).pretrained is value


def test_config_file_gives_defaults_that_flags_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_size: 128\nlr: 0.05\npretrained: false\n")
    a = train.parse_args(["--config", str(cfg), "--lr=0.2"])
    assert (a.batch_size, a.lr) == (128, 0.2)
    cfg.write_text("batch_sise: 128\n")
    with pytest.raises(train.ConfigError, match="batch_sise"):
        train.parse_args(["--config", str(cfg)])


def test_bad_input_from_the_command_line_has_no_traceback(workdir):
    res = run([str(ROOT / "train.py"), "--epochs=two"], cwd=workdir)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr and "--epochs" in res.stderr
    assert not (workdir / "runs").exists() and not (workdir / "wandb").exists()


@pytest.mark.slow
def test_pretrained_without_local_weights_says_how_to_supply_them(workdir):
    res = run([str(ROOT / "train.py"), "--pretrained", "--model=resnet10t"], cwd=workdir,
              env=clean_env(HOME=str(workdir), HF_HOME=str(workdir / "hf")))
    assert res.returncode == 2 and "--pretrained_path" in res.stderr and "Traceback" not in res.stderr
    assert not (workdir / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("source", ["pretrained_path", "hf_cache"])
def test_pretrained_weights_load_from_a_file_or_the_hf_cache(workdir, source):
    import timm
    import torch
    torch.manual_seed(0)
    ref = timm.create_model("resnet10t")  # 3 channels, 1000 classes: timm adapts both on load
    if source == "pretrained_path":
        weights, flags = workdir / "w.pth", [f"--pretrained_path={workdir}/w.pth"]
    else:  # the layout huggingface_hub gives its cache
        repo = workdir / "hf/hub/models--timm--resnet10t.c3_in1k"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs/main").write_text("0" * 40)
        weights, flags = repo / "snapshots" / ("0" * 40) / "pytorch_model.bin", []
        weights.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), weights)
    res = run([str(ROOT / "train.py"), *TINY, "--epochs=1", "--pretrained", *flags, "--wandb_mode=disabled",
               "--output_dir=out"], cwd=workdir, env=clean_env(HF_HOME=str(workdir / "hf")))
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((workdir / "out/summary.json").read_text())["status"] == "finished"


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Tiny runs in one process (the imports paid once), for the tests below that only read their results."""
    folder = tmp_path_factory.mktemp("tiny")
    runs = {"seed0": ["--seed=0"], "seed0_again": ["--seed=0"], "seed1": ["--seed=1"],
            "constant": ["--scheduler=constant", "--lr=0.01"]}
    res = train_many([[*TINY, *flags, "--wandb_mode=disabled", f"--output_dir={name}"] for name, flags in runs.items()],
                     folder)
    assert res.returncode == 0, res.stderr[-2000:]
    return folder


@pytest.mark.slow
def test_constant_schedule_keeps_the_lr(tiny_runs):
    assert [float(r["train/lr"]) for r in read_history(tiny_runs / "constant")] == [0.01, 0.01]


@pytest.mark.slow
def test_same_seed_gives_identical_test_metrics(tiny_runs):
    results = [(s["test/acc"], s["test/loss"]) for s in map(summary_of, (tiny_runs / "seed0", tiny_runs / "seed0_again",
                                                                        tiny_runs / "seed1"))]
    assert results[0] == results[1]
    assert results[0] != results[2]  # the seed does change something


def test_two_processes_train_one_model_in_one_wandb_run(workdir):
    # --multi_gpu on a CPU machine: two real gloo ranks, because train.py creates the Accelerator with cpu=True
    res = run(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2", "--num_machines=1",
               "--mixed_precision=no", "--dynamo_backend=no", str(ROOT / "train.py"), *TINY, "--output_dir=out"],
              cwd=workdir, env=clean_env(HOME=str(workdir)))
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((workdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    s = json.loads((workdir / "out/summary.json").read_text())
    assert s["data/samples_per_rank"] == [64, 64]  # each rank trained on half of the 128 samples
    assert not unlisted_keys(workdir / "out")
    recorded = inspect_wandb(runs[0])
    assert recorded["config"]["num_processes"] == 2 and recorded["config"]["global_batch_size"] == 64
    assert 0 <= recorded["summary"]["test/acc"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["flat", "split"])
def test_imagefolder_reads_class_subfolders(workdir, layout):
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    folders = {"flat": [""], "split": ["train", "val", "test"]}[layout]
    for i in range(200):  # real digits, written as the PNG files a user would have
        sub = folders[i % len(folders)]
        path = workdir / "imgs" / sub / f"class_{digits.target[i]}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 15).astype("uint8")).convert("RGB").save(path)
    res = run([str(ROOT / "train.py"), "--dataset=imagefolder", f"--data_dir={workdir}/imgs", "--epochs=1",
               "--img_size=16", "--batch_size=32", "--wandb_mode=disabled", "--output_dir=out"], cwd=workdir)
    assert res.returncode == 0, res.stderr[-2000:]
    config = json.loads((workdir / "out/config.json").read_text())
    assert config["num_classes"] == 10
    sizes = [config[k] for k in ("train_size", "val_size", "test_size")]
    assert sizes == ([140, 20, 40] if layout == "flat" else [67, 67, 66])  # the given split is kept as it is
