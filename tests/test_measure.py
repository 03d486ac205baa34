"""train.py as a measuring instrument: precise batch norm, evaluation points and steps to a target, activation
memory, label noise, model options, and settings that come from `accelerate launch` or a W&B config.yaml."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import PATIENCE, ROOT, TINY, clean_env, inspect_wandb, run, summary_of, train_many, unlisted_keys

sys.path.insert(0, str(ROOT))
import data  # noqa: E402
import runfiles  # noqa: E402
import train  # noqa: E402

ACCELERATE = ["-m", "accelerate.commands.launch", "--num_machines=1", "--dynamo_backend=no"]


def history(out):
    return runfiles.read_history(out / runfiles.HISTORY)


@pytest.mark.slow
def test_precise_bn_turns_chance_level_batch_256_into_a_trained_model(workdir):
    # 3 epochs at batch 256 are 12 updates: the running statistics still hold most of their initial values.
    runs = {(seed, pb): workdir / f"s{seed}_{pb}" for seed in (0, 1, 2) for pb in ("false", "true")}
    res = train_many([["--batch_size=256", "--epochs=3", f"--seed={seed}", f"--precise_bn={pb}",
                       "--wandb_mode=disabled", f"--output_dir={out}"] for (seed, pb), out in runs.items()], workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("evaluation used batch-norm running statistics from only 12 updates") == 3
    for seed in (0, 1, 2):
        running, precise = summary_of(runs[seed, "false"]), summary_of(runs[seed, "true"])
        assert running["test/acc"] < 0.6 and precise["test/acc"] >= 0.9, (seed, running, precise)
        assert precise["time/precise_bn_s"] > 0 and running["time/precise_bn_s"] == 0
        # the same training, bit for bit: precise BN changes what evaluation sees, never the updates
        train_curves = [[h["train/loss"] for h in history(runs[seed, pb])] for pb in ("false", "true")]
        assert train_curves[0] == train_curves[1]


@pytest.mark.slow
def test_precise_bn_statistics_are_the_same_on_both_ranks(workdir):
    res = run([*ACCELERATE, "--multi_gpu", "--num_processes=2", "--mixed_precision=no",
               str(ROOT / "tests/rank_stats.py"), *TINY, "--epochs=1", "--precise_bn", "--wandb_mode=disabled",
               "--output_dir=out"], cwd=workdir, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    stats = {p.stem: torch.load(p) for p in (workdir / "rank_stats").iterdir()}
    assert {k.split("_")[0] for k in stats} == {"0", "1"} and "0_2_after" in stats  # validation, then test
    # each rank recomputed them on its own shard, then both use their mean
    assert any(not torch.equal(a, b) for a, b in zip(stats["0_1_before"], stats["1_1_before"], strict=True))
    for call in ("1", "2"):
        for a, b in zip(stats[f"0_{call}_after"], stats[f"1_{call}_after"], strict=True):
            assert torch.equal(a, b)


@pytest.mark.slow
def test_evaluation_points_and_steps_to_a_target(workdir):
    # 256 images in batches of 32: 8 updates an epoch, evaluated at updates 2, 4, 6, 8 of each epoch.
    flags = [*TINY, "--train_samples=256", "--epochs=3", "--evals_per_epoch=4", "--precise_bn", "--lr=0.01",
             "--wandb_mode=disabled"]
    targets = (0.6, 0.999)  # one reached, one never: the same training, so two runs are enough
    argvs = [[*flags, f"--target_val_acc={t}", f"--output_dir=t{t}"] for t in targets]
    argvs.append([*flags, "--target_val_acc=0.6", "--stop_at_target", "--output_dir=stop"])
    # the same lr from --lr_base (0.32 at 1,024 images a batch is 0.01 at 32), for 11 updates only
    budget = [f for f in flags if not f.startswith("--lr=")] + ["--lr_base=0.32", "--lr_base_size=1024"]
    argvs.append([*budget, "--max_updates=11", "--output_dir=budget"])
    res = train_many(argvs, workdir)
    assert res.returncode == 0, res.stderr[-3000:]

    rows = history(workdir / "t0.6")
    assert [h["update"] for h in rows] == list(range(2, 25, 2))
    assert [h["epoch"] for h in rows] == [u / 8 for u in range(2, 25, 2)]
    assert [h["examples"] for h in rows] == [32 * u for u in range(2, 25, 2)]
    assert all(a["time/train_s"] < b["time/train_s"] for a, b in zip(rows, rows[1:], strict=False))
    reached = []
    for t in targets:
        s = summary_of(workdir / f"t{t}")
        first = next((h for h in history(workdir / f"t{t}") if h["val/acc"] >= t), None)
        if first is None:
            assert all(math.isnan(s[f"target/{k}"]) for k in ("updates", "examples", "train_s", "epoch"))
            reached.append(math.inf)
            continue
        assert (s["target/updates"], s["target/examples"], s["target/train_s"]) == (
            first["update"], first["examples"], first["time/train_s"])
        reached.append(s["target/updates"])
    assert reached == sorted(reached) and math.isfinite(reached[0])  # a higher target never comes sooner

    budget = history(workdir / "budget")
    assert [h["update"] for h in budget] == [2, 4, 6, 8, 10, 11] and summary_of(workdir / "budget")["update"] == 11
    config = json.loads((workdir / "budget/config.json").read_text())
    assert (config["lr"], config["epochs"]) == (pytest.approx(0.01), 2)
    assert budget[0]["train/loss"] == rows[0]["train/loss"]  # the same lr, so the same first updates
    assert budget[-1]["train/lr"] < 0.01 * 0.05  # the cosine schedule spans the 11 updates, not 24

    stopped = summary_of(workdir / "stop")
    assert stopped["status"] == "reached_target" and math.isfinite(stopped["test/acc"])
    assert history(workdir / "stop")[-1]["update"] == stopped["target/updates"] == stopped["update"]
    assert not unlisted_keys(workdir / "stop") and not unlisted_keys(workdir / "t0.999")


@pytest.mark.slow
def test_activation_memory_doubles_with_the_batch(workdir):
    argvs = [[*TINY, "--epochs=1", "--train_samples=64", f"--batch_size={bs}", "--wandb_mode=disabled",
              f"--output_dir=b{bs}"] for bs in (16, 32)]
    res = train_many(argvs, workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    small, large = (summary_of(workdir / f"b{bs}")["memory/activations_mb"] for bs in (16, 32))
    assert small > 0.5 and large / small == pytest.approx(2, rel=0.1)


FAULTS = """import ctypes, resource
import data
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
def faults():  # of 4 blocks of 64 MB, each written and freed at once, as a layer's activations are each update
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt  # pages the kernel handed over, zeroed
        block = libc.malloc(2**26)
        ctypes.memset(block, 1, 2**26)
        libc.free(block)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
print(data.keep_freed_memory())
faults()
before = resident_mb()
data.plain_malloc(worker_id=0)  # what a loader worker forked from this process does first
print(round(before - resident_mb()))  # MB the heap gave back
faults()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_a_cpu_run_reuses_freed_activation_memory_but_its_loader_workers_and_a_users_malloc_do_not(workdir):
    got = {}
    for side, env in (("kept", clean_env(PYTHONPATH=str(ROOT))),
                      ("user's", clean_env(PYTHONPATH=str(ROOT), MALLOC_ARENA_MAX="8"))):
        res = subprocess.run([sys.executable, "-c", FAULTS], cwd=workdir, env=env, capture_output=True, text=True,
                             timeout=PATIENCE)
        assert res.returncode == 0, res.stderr[-2000:]
        got[side] = res.stdout.split()
    pages = 2**26 // 4096  # 64 MB in 4 KiB pages
    applied, *faults = got["kept"]
    kept, given_back, worker = list(map(int, faults[:4])), int(faults[4]), list(map(int, faults[5:]))
    assert applied == "True" and kept[0] > pages / 2 and max(kept[1:]) < pages / 20  # faulted in once, then reused
    assert given_back > 32  # MB: a loader worker gives back the free 64 MB it inherited...
    assert min(worker) > pages / 2  # ...and goes back to glibc's own limits: a fresh mmap each time
    applied, *faults = got["user's"]
    del faults[4]  # plain_malloc did nothing here
    assert applied == "False" and min(map(int, faults)) > pages / 2  # glibc as the user set it: a fresh mmap


@pytest.mark.slow
def test_a_cpu_run_uses_no_amx_kernels_unless_the_user_sets_onednns_ceiling(workdir):
    # AMX's kernels ended bf16 runs here with a NaN loss at random (bench/amx.py); a run on them is a user's choice
    amx = "amx_bf16" in open("/proc/cpuinfo").read() if sys.platform == "linux" else False
    flags = [str(ROOT / "train.py"), *TINY, "--epochs=1", "--mixed_precision=bf16", "--wandb_mode=disabled"]
    for out, ceiling, shown in (("default", None, "AVX512_CORE_FP16"), ("user", "ALL", "ALL")):
        env = clean_env(ONEDNN_VERBOSE="1", **({"ONEDNN_MAX_CPU_ISA": ceiling} if ceiling else {}))
        res = run([*flags, f"--output_dir={out}"], cwd=workdir, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        kernels = [line for line in res.stdout.splitlines() if ",primitive,exec,cpu," in line]  # oneDNN's log
        assert any(",convolution," in k for k in kernels)  # the model's convolutions ran on oneDNN's kernels
        assert any("amx" in k for k in kernels) == (amx and ceiling == "ALL")
        assert json.loads((workdir / out / "config.json").read_text())["onednn_max_cpu_isa"] == shown


def test_label_noise_changes_only_training_labels_fixed_by_seed():
    def splits(noise, seed=0):
        return data.load_data(train.parse_args([f"--label_noise={noise}", f"--seed={seed}"])).splits

    clean, noisy, again, other = splits(0), splits(0.2), splits(0.2), splits(0.2, seed=1)
    changed = clean["train"][1] != noisy["train"][1]
    assert changed.sum() == round(0.2 * len(changed))  # each chosen label moved to a different class
    assert np.array_equal(clean["train"][0], noisy["train"][0])  # the same images
    for name in ("val", "test"):
        assert np.array_equal(clean[name][1], noisy[name][1])
    assert np.array_equal(noisy["train"][1], again["train"][1])
    assert not np.array_equal(other["train"][1], splits(0, seed=1)["train"][1])


@pytest.mark.slow
def test_groupnorm_model_and_its_run_recorded_in_config_yaml_rerun(workdir):
    flags = [*TINY, "--epochs=1", "--model_kwargs=norm_layer=groupnorm1", "--label_noise=0.25"]
    res = run([str(ROOT / "train.py"), *flags, "--output_dir=gn"], cwd=workdir, env=clean_env(HOME=str(workdir)))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "batch-norm" not in res.stdout  # no batch norm, so no warning about its statistics
    assert not [k for k in load_file(workdir / "gn/model.safetensors") if "running" in k]
    config = json.loads((workdir / "gn/config.json").read_text())
    assert config["model_kwargs"] == {"norm_layer": "groupnorm1"} and config["label_noise_changed"] == 32

    # The config.yaml W&B keeps for every run, written by W&B's own code from what it recorded here.
    from wandb.sdk.lib.config_util import save_config_file_from_dict
    recorded = inspect_wandb(summary_of(workdir / "gn")["wandb_run_dir"])["config"]
    save_config_file_from_dict(str(workdir / "config.yaml"),
                               {k: {"desc": None, "value": v} for k, v in recorded.items()})
    args = train.parse_args(["--config", str(workdir / "config.yaml")])
    for key, value in vars(args).items():
        if key != "config":
            assert value == config[key], key


@pytest.mark.slow
def test_accelerate_launch_settings_apply_unless_a_flag_is_given(workdir):
    # bf16 is slow on this CPU: one update, and small validation and test splits
    few = ["--img_size=8", "--train_samples=32", "--batch_size=32", "--epochs=1", "--val_fraction=0.02",
           "--test_fraction=0.02", "--wandb_mode=disabled"]
    res = run([*ACCELERATE, "--num_processes=1", "--mixed_precision=bf16", str(ROOT / "train.py"), *few,
               "--output_dir=launched"], cwd=workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((workdir / "launched/config.json").read_text())["mixed_precision"] == "bf16"
    # what `accelerate launch --mixed_precision bf16` passes; an explicit flag wins over it
    env = clean_env(ACCELERATE_MIXED_PRECISION="bf16")
    res = run([str(ROOT / "train.py"), *few, "--mixed_precision=no", "--output_dir=flag"], cwd=workdir, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((workdir / "flag/config.json").read_text())["mixed_precision"] == "no"
