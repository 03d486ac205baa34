"""Runs that fail well: divergence, out-of-memory, preemption and resume, early stopping, checkpoints,
bad input and secrets. train.py runs as a subprocess with W&B offline, as in test_train.py."""

import base64
import dataclasses
import hashlib
import json
import math
import signal
import subprocess
import sys

import pytest
import torch

from conftest import BIN, PATIENCE, ROOT, TINY, clean_env, inspect_wandb, run, signalled, unlisted_keys

sys.path.insert(0, str(ROOT))
import data  # noqa: E402
import runfiles  # noqa: E402
import train  # noqa: E402

ACCELERATE_2 = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2", "--num_machines=1",
                "--mixed_precision=no", "--dynamo_backend=no"]


def summary_of(out):
    return json.loads((out / "summary.json").read_text())


def wandb_records(run_dir):
    """Every record of an offline run's .wandb log, read with W&B's own reader."""
    out = subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--json", str(run_dir)],
                         capture_output=True, text=True, check=True, timeout=PATIENCE)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------
# Divergence and out-of-memory: recorded results, exit 0

@pytest.mark.slow
def test_divergence_stops_at_the_step_and_is_recorded(workdir):
    res = run([str(ROOT / "train.py"), *TINY, "--batch_size=16", "--epochs=3", "--optimizer=sgd", "--lr=1e6",
               "--output_dir=out"], cwd=workdir, env=clean_env(HOME=str(workdir)))
    assert res.returncode == 0, res.stderr[-2000:]
    s = summary_of(workdir / "out")
    # 128 images in batches of 16: 8 steps an epoch; it stops at the first non-finite loss, not at an epoch's end
    assert s["status"] == "diverged" and s["stop/epoch"] == 1 and 1 <= s["stop/step"] < 8
    assert s["update"] == s["stop/step"] - 1 and math.isnan(s["test/acc"])  # the updates before the bad one
    recorded = inspect_wandb(s["wandb_run_dir"])["summary"]
    assert (recorded["status"], recorded["stop/epoch"], recorded["stop/step"]) == ("diverged", 1, s["stop/step"])
    assert not unlisted_keys(workdir / "out", recorded)


@pytest.mark.slow
@pytest.mark.parametrize("error", ["torch.OutOfMemoryError", "MemoryError"])
def test_out_of_memory_is_recorded_with_the_batch_size_and_memory(workdir, error):
    env = clean_env(HOME=str(workdir), OOM_STEP="3", OOM_ERROR=error)
    res = run([str(ROOT / "tests/failing_model.py"), *TINY, "--model=oom_resnet", "--output_dir=out"], cwd=workdir,
              env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    s = summary_of(workdir / "out")
    assert (s["status"], s["stop/epoch"], s["stop/step"], s["oom/batch_size"]) == ("oom", 1, 3, 32)
    assert 50 < s["oom/rss_mb"] < s["oom/total_mb"] and 0 < s["oom/free_mb"] < s["oom/total_mb"]
    recorded = inspect_wandb(s["wandb_run_dir"])["summary"]
    assert recorded["status"] == "oom" and recorded["oom/batch_size"] == 32
    assert not unlisted_keys(workdir / "out", recorded)


@pytest.mark.slow
def test_out_of_memory_on_one_rank_stops_both_ranks(workdir):
    env = clean_env(HOME=str(workdir), OOM_STEP="2", OOM_RANK="1")  # rank 0 is fine; it must not hang
    res = run([*ACCELERATE_2, str(ROOT / "tests/failing_model.py"), *TINY, "--model=oom_resnet", "--batch_size=16",
               "--wandb_mode=disabled", "--output_dir=out"], cwd=workdir, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    s = summary_of(workdir / "out")
    assert (s["status"], s["stop/step"], s["oom/batch_size"]) == ("oom", 2, 16)


# ----------------------------------------------------------------------------------------------
# Preemption and resume

@pytest.mark.slow
def test_preempted_run_resumes_the_same_wandb_run_to_the_same_result(workdir):
    fake_key = "feedface" * 5  # 40 characters, like a W&B API key: it must never be written anywhere
    env = clean_env(HOME=str(workdir), WANDB_MODE="offline", WANDB_API_KEY=fake_key)
    argv = [sys.executable, str(ROOT / "train.py"), *TINY, "--train_samples=256", "--epochs=3", "--log_model"]
    whole = run(argv[1:] + ["--output_dir=whole"], cwd=workdir, env=env)
    assert whole.returncode == 0, whole.stderr[-2000:]

    cut = signalled(argv[2:] + ["--output_dir=cut"], workdir, env, "TERM", at="evaluation_point")  # epoch 1 done
    printed = cut.stdout + cut.stderr
    assert cut.returncode == 128 + signal.SIGTERM, printed[-2000:]  # non-zero: W&B's agent requeues it
    stopped = summary_of(workdir / "cut")
    assert stopped["status"] == "preempted" and "run the same command to resume" in printed
    assert (stopped["stop/epoch"], stopped["stop/step"], stopped["update"]) == (2, 1, 9)  # the next update
    progress = json.loads((workdir / "cut/checkpoint/progress.json").read_text())
    assert list(progress) == [f.name for f in dataclasses.fields(runfiles.Progress)]  # what the loop state is
    assert progress["epoch"] + 1 == stopped["stop/epoch"] and progress["step"] == stopped["stop/step"]
    saved = {p.name for p in (workdir / "cut/checkpoint").iterdir()}
    assert {"model.safetensors", "optimizer.bin", "custom_checkpoint_0.pkl", "random_states_0.pkl"} <= saved
    first = wandb_records(stopped["wandb_run_dir"])
    assert any(r["type"] == "preempting" for r in first)  # wandb.mark_preempting() was called
    assert not [r for r in first if r["type"] == "artifact" and r["artifact"]["type"] == "model"]  # not yet

    resumed = run(argv[1:] + ["--output_dir=cut"], cwd=workdir, env=env)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    a, b = summary_of(workdir / "whole"), summary_of(workdir / "cut")
    assert b["status"] == "finished" and not (workdir / "cut/checkpoint").exists()
    for key in ("test/acc", "test/loss", "train/loss", "val/loss"):
        assert b[key] == a[key], key  # on CPU, bit for bit
    assert (workdir / "cut/history.csv").read_text().count("\n") == 4  # header + 3 epochs, none twice
    assert inspect_wandb(b["wandb_run_dir"])["run_id"] == inspect_wandb(stopped["wandb_run_dir"])["run_id"]
    assert b["wandb_run_dir"] != stopped["wandb_run_dir"]  # offline: a second file of the same run, for wandb sync
    assert not unlisted_keys(workdir / "cut", inspect_wandb(b["wandb_run_dir"])["summary"])
    records = wandb_records(b["wandb_run_dir"])
    assert len([r for r in records if r["type"] == "artifact" and r["artifact"]["type"] == "model"]) == 1

    for path in workdir.rglob("*"):  # config, summary, history, checkpoints, W&B's files, model artifacts
        if path.is_file():
            assert fake_key.encode() not in path.read_bytes(), path
    assert fake_key not in whole.stdout + whole.stderr + printed + resumed.stdout + resumed.stderr


# ----------------------------------------------------------------------------------------------
# Early stopping and the best model

@pytest.mark.slow
def test_early_stopping_tests_the_best_epochs_weights_and_logs_them(workdir):
    res = run([str(ROOT / "train.py"), *TINY, "--epochs=40", "--lr=0.01", "--early_stopping_patience=2",
               "--log_model", "--output_dir=out"], cwd=workdir, env=clean_env(HOME=str(workdir)))
    assert res.returncode == 0, res.stderr[-2000:]
    s = summary_of(workdir / "out")
    history = runfiles.read_history(workdir / "out/history.csv")
    losses = [h["val/loss"] for h in history]
    best = losses.index(min(losses))
    assert s["status"] == "early_stopped" and len(history) < 40 and not unlisted_keys(workdir / "out")
    assert len(history) == best + 1 + 2  # two epochs without a lower val/loss after the best one

    # The test metrics are those of the saved best weights, recomputed here from model.safetensors.
    import timm
    import torch
    from safetensors.torch import load_file
    args = train.parse_args([*TINY])
    loaded = data.load_data(args)
    model = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    model.load_state_dict(load_file(workdir / "out/model.safetensors"))
    model.eval()
    test = loaded.loaders(args, timm.data.resolve_model_data_config(model), torch.device("cpu"), 1)[2].dataset
    with torch.no_grad():
        x, y = test.__getitems__(range(len(test)))
        logits = model(x)
    assert (logits.argmax(1) == y).float().mean().item() == pytest.approx(s["test/acc"], abs=1e-6)
    assert torch.nn.functional.cross_entropy(logits, y).item() == pytest.approx(s["test/loss"], rel=1e-4)

    [artifact] = [r["artifact"] for r in wandb_records(s["wandb_run_dir"])
                  if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    [entry] = artifact["manifest"]["contents"]
    md5 = base64.b64encode(hashlib.md5((workdir / "out/model.safetensors").read_bytes()).digest()).decode()
    assert entry["path"] == "model.safetensors" and entry["digest"] == md5 and "best" in artifact["aliases"]


# ----------------------------------------------------------------------------------------------
# Bad input: one line naming the problem and the fix, exit 2, nothing written

def image_folder(root, corrupt=False, empty=False):
    from PIL import Image
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        if not (empty and c == "b"):
            for i in range(3):
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / c / f"{i}.png")
    if corrupt:
        (root / "b" / "broken.png").write_bytes(b"not a png at all")
    return root


BAD_INPUT = [
    (["--batch_size=abc"], "--batch_size: expected a whole number >= 1"),
    (["--batch_size=0"], "--batch_size: expected a whole number >= 1"),
    (["--batch_size=-8"], "--batch_size: expected a whole number >= 1"),
    (["--lr=fast"], "--lr: expected a number > 0"),
    (["--lr=0"], "--lr: expected a number > 0"),
    (["--lr=-0.1"], "--lr: expected a number > 0"),
    (["--epochs=ten"], "--epochs: expected a whole number >= 1"),
    (["--epochs=0"], "--epochs: expected a whole number >= 1"),
    (["--epochs=-3"], "--epochs: expected a whole number >= 1"),
    (["--model=resnet10"], "unknown timm model 'resnet10'; did you mean resnet10t"),
    (["--dataset=imagenet"], "invalid choice: 'imagenet'"),
    (["--dataset=mnist", "--data_dir=no_such_dir"], "--data_dir no_such_dir does not exist"),
    (["--dataset=imagefolder", "--data_dir=no_such_dir"], "your imagefolder data\n"),  # no --download to add
    (["--dataset=imagefolder", "--data_dir=corrupt"], "cannot read image"),
    (["--dataset=imagefolder", "--data_dir=empty"], "class folder(s) b in empty hold no images"),
    (["--batch_size=5000"], "is larger than the 1259 training images; use --batch_size 1259 or less"),
    (["--config=not_yaml.yaml"], "cannot read --config not_yaml.yaml"),
    (["--config=unknown_key.yaml"], "unknown key 'learning_rate'"),
    (["--config=bad_value.yaml"], "bad value for 'epochs'"),
    (["--mixed_precision=fp16"], "fp16 needs a CUDA GPU; on the CPU use --mixed_precision no"),
    (["--pretrained", "--pretrained_path=no_weights.pth"], "--pretrained_path no_weights.pth is not a file"),
    (["--batch_sise=64"], "unrecognized arguments: --batch_sise=64"),  # a typo must not quietly run the default
    (["--lr_=0.1"], "unrecognized arguments: --lr_=0.1"),  # nor a prefix match (allow_abbrev=False)
    (["--pretrained=maybe"], "expected true/false/1/0"),
    (["--mixed_precision=fp8"], "invalid choice: 'fp8'"),
    (["--img_size=4"], "--img_size: expected a whole number in [8, 16384]"),
    (["--val_fraction=1.5"], "--val_fraction: expected a number in (0, 1)"),
    (["--noise_scale"], "set --grad_accum_steps 2 or more"),
    # numbers out of their range
    (["--seed=-1"], "--seed: expected a whole number in [0, 4294967295]"),
    (["--momentum=-0.5", "--optimizer=sgd"], "--momentum: expected a number in [0, 1)"),
    (["--weight_decay=-0.1"], "--weight_decay: expected a number >= 0"),
    (["--clip_grad=-1"], "--clip_grad: expected a number >= 0"),
    (["--label_smoothing=1.5"], "--label_smoothing: expected a number in [0, 1)"),
    (["--label_noise=1"], "--label_noise: expected a number in [0, 1)"),
    (["--target_val_acc=1.5"], "--target_val_acc: expected a number in [0, 1]"),
    (["--evals_per_epoch=0"], "--evals_per_epoch: expected a whole number >= 1"),
    (["--grad_accum_steps=0"], "--grad_accum_steps: expected a whole number >= 1"),
    (["--img_size=big"], "--img_size: expected a whole number in [8, 16384]"),
    # sizes that leave a split empty or ask for more than there is
    (["--train_samples=5000"], "--train_samples 5000 is more than the 1259 training images"),
    (["--test_fraction=0.001"], "the test split is empty; raise --test_fraction"),
    (["--val_fraction=0.5", "--test_fraction=0.5"], "must leave images to train on"),
    # flags that do not go together
    (["--momentum=0.9", "--optimizer=adamw"], "--optimizer adamw takes no momentum"),
    (["--stop_at_target"], "--stop_at_target needs --target_val_acc"),
    (["--lr=0.1", "--lr_base=0.1"], "give --lr or --lr_base, not both"),
    (["--max_updates=-5"], "--max_updates: expected a whole number >= 0"),
    (["--optimizer=adamm"], "unknown --optimizer 'adamm'; choose a timm optimizer such as adam"),
    (["--optimizer=fusedadam"], "--optimizer fusedadam cannot run here"),
    # models that cannot be built, loaded or run as asked
    (["--model=vit_tiny_patch16_224", "--img_size=32"], "cannot run at --img_size 32: it runs at --img_size 224"),
    (["--model_kwargs=groupnorm"], "--model_kwargs: expected key=value pairs"),
    (["--model_kwargs=norm_layer=groupnorm"], "cannot build resnet10t with --model_kwargs"),
    (["--model_kwargs=no_such_arg=1"], "cannot build resnet10t with --model_kwargs"),
    (["--pretrained", "--pretrained_path=not_weights.pth"], "cannot load not_weights.pth into resnet10t"),
    (["--pretrained", "--pretrained_path=other.safetensors"], "cannot load other.safetensors into resnet10t"),
    # files and names
    (["--config=list_value.yaml"], "lr in --config list_value.yaml is a list or mapping"),
    (["--config=a_list.yaml"], "must be a mapping of flag names to values"),
    (["--output_dir=a_file"], "--output_dir a_file is a file"),
    (["--wandb_tags=" + "t" * 65], "W&B tags are at most 64 characters"),
    (["--wandb_project=a/b"], "single names without '/'"),
    (["--dataset=mnist", "--data_dir=new_dir", "--download"], "mnist not found in --data_dir new_dir"),
    (["--dataset=imagefolder", "--data_dir=stray_val"], "has class folder(s) c that train/ lacks"),
    (["--dataset=imagefolder", "--data_dir=two_vals"], "has both val/ and validation/"),
    (["--dataset=imagefolder", "--data_dir=no_classes"], "has no class subfolders"),
]


@pytest.mark.parametrize("argv, words", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(workdir, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(workdir)
    image_folder(workdir / "corrupt", corrupt=True)
    image_folder(workdir / "empty", empty=True)
    (workdir / "not_yaml.yaml").write_text("batch_size: [64\n")
    (workdir / "unknown_key.yaml").write_text("learning_rate: 0.1\n")
    (workdir / "bad_value.yaml").write_text("epochs: many\n")
    (workdir / "list_value.yaml").write_text("lr: [0.1, 0.2]\n")
    (workdir / "a_list.yaml").write_text("- lr: 0.1\n")
    (workdir / "a_file").write_text("")
    (workdir / "not_weights.pth").write_bytes(b"\x00" * 64)
    from safetensors.torch import save_file
    save_file({"fc.weight": torch.zeros(3, 3)}, workdir / "other.safetensors")
    image_folder(workdir / "stray_val/train")
    image_folder(workdir / "stray_val/val")
    (workdir / "stray_val/val/c").mkdir()
    image_folder(workdir / "two_vals/train")
    for name in ("val", "validation"):
        image_folder(workdir / "two_vals" / name)
    (workdir / "no_classes").mkdir()
    (workdir / "no_classes/loose.png").write_bytes(b"")
    before = sorted(p.name for p in workdir.iterdir())
    with pytest.raises(SystemExit) as exit:
        train.main(["--output_dir=out", "--wandb_mode=offline", *argv])
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert err.startswith("train.py: error: ") and err.count("\n") == 1, err
    assert words in err
    assert sorted(p.name for p in workdir.iterdir()) == before  # no out/, no wandb/
