"""Nothing lost, nothing mixed: a run stopped at any moment resumes exactly, a resume with other flags or a
rerun of a finished run changes nothing, checkpoints survive a cut swap and a full disk, and real memory
limits and an unreachable W&B end as recorded results. train.py runs as a subprocess, W&B offline; a signal
comes at an exact point of the run (tests/signal_at.py), however busy the host."""

import json
import math
import resource
import signal
import subprocess
import sys

import pytest

from conftest import PATIENCE, ROOT, TINY, clean_env, inspect_wandb, run, signalled, summary_of, unlisted_keys

sys.path.insert(0, str(ROOT))
import runfiles  # noqa: E402

FLAGS = [*TINY, "--epochs=2", "--evals_per_epoch=2"]
ACCELERATE_2 = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2", "--num_machines=1",
                "--mixed_precision=no", "--dynamo_backend=no"]


def files(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_stopped_in_setup_resumes_exactly_and_refuses_other_flags_and_reruns(workdir):
    env = clean_env(HOME=str(workdir))
    whole = run([str(ROOT / "train.py"), *FLAGS, "--output_dir=whole"], cwd=workdir, env=env)
    assert whole.returncode == 0, whole.stderr[-2000:]

    # SIGTERM while the run is still setting up (W&B has started, no update yet): it stops after the first update
    cut = signalled([*FLAGS, "--output_dir=cut"], workdir, env, "TERM", at="open_folder")
    assert cut.returncode == 128 + signal.SIGTERM, cut.stdout[-2000:] + cut.stderr[-2000:]
    stopped = summary_of(workdir / "cut")
    assert (stopped["status"], stopped["stop/epoch"], stopped["update"]) == ("preempted", 1, 1)
    assert (workdir / "cut/checkpoint/progress.json").exists()

    # another lr, seed or batch size would blend two runs: refused, naming the flags, and nothing is touched
    before = files(workdir / "cut")
    other = run([str(ROOT / "train.py"), *FLAGS, "--lr=0.01", "--seed=3", "--output_dir=cut"], cwd=workdir, env=env)
    assert other.returncode == 2 and other.stderr.count("\n") == 1 and "Traceback" not in other.stderr
    assert "lr=0.002" in other.stderr and "seed=0" in other.stderr
    assert files(workdir / "cut") == before

    # a resume killed hard after its first point: the preempted part's summary (update <= 1) is gone, not left
    # beside a history that goes further (found by bench/soak.py)
    killed = signalled([*FLAGS, "--output_dir=cut"], workdir, env, "KILL", at="evaluation_point")
    assert killed.returncode == -signal.SIGKILL and len(runfiles.read_history(workdir / "cut/history.csv")) == 1
    assert not (workdir / "cut/summary.json").exists()

    # the same flags resume it (tags may differ: they do not change what is trained)
    resumed = run([str(ROOT / "train.py"), *FLAGS, "--wandb_tags=resumed", "--output_dir=cut"], cwd=workdir, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = summary_of(workdir / "whole"), summary_of(workdir / "cut")
    for key in ("test/acc", "test/loss", "val/loss_final", "train/loss"):
        assert a[key] == b[key], key
    history = runfiles.read_history(workdir / "cut/history.csv")
    assert [h["update"] for h in history] == [2, 4, 6, 8]
    assert not (workdir / "cut/checkpoint").exists()

    # the same command once more (a requeued job): nothing to do, and nothing changes
    finished = files(workdir / "cut")
    again = run([str(ROOT / "train.py"), *FLAGS, "--output_dir=cut"], cwd=workdir, env=env)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert files(workdir / "cut") == finished


@pytest.mark.slow
def test_a_checkpoint_swap_cut_short_is_finished_and_a_half_deleted_one_ignored(workdir):
    env = clean_env(HOME=str(workdir))
    for name in ("swap", "deleted"):
        res = signalled([*FLAGS, "--wandb_mode=disabled", f"--output_dir={name}"], workdir, env, "TERM",
                        at="evaluation_point")
        assert res.returncode == 128 + signal.SIGTERM, res.stderr[-2000:]
    # killed between moving the old checkpoint aside and renaming the new one: only checkpoint.tmp is whole
    (workdir / "swap/checkpoint").rename(workdir / "swap/checkpoint.tmp")
    # killed while deleting: progress.json goes first, so what is left is never taken for a checkpoint
    (workdir / "deleted/checkpoint/progress.json").unlink()
    (workdir / "deleted/checkpoint/optimizer.bin").unlink()
    for name, word in (("swap", "resuming"), ("deleted", "")):
        res = run([str(ROOT / "train.py"), *FLAGS, "--wandb_mode=disabled", f"--output_dir={name}"], cwd=workdir,
                  env=env)
        assert res.returncode == 0, res.stderr[-2000:]
        assert (word in res.stdout) if word else ("resuming" not in res.stdout)
        assert summary_of(workdir / name)["status"] == "finished"
        assert [h["update"] for h in runfiles.read_history(workdir / name / "history.csv")] == [2, 4, 6, 8]


# A full disk: a tmpfs of 45 MB has room for the best model (19 MB), not for a checkpoint (model and optimizer,
# 57 MB). It is mounted in a mount namespace of the run's own (`unshare`: as root, or as a user where the kernel
# allows user namespaces), and the run's folder is copied out before the namespace goes.
ON_TMPFS = 'mount -t tmpfs -o size=45m tmpfs disk && "$@"; code=$?; cp -r disk/out copied; exit $code'


def tmpfs_refused(workdir):
    """Why a tmpfs cannot be mounted here, or "" when it can."""
    (workdir / "disk").mkdir()
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "tmpfs",
                            str(workdir / "disk")], capture_output=True, text=True)
    return "" if probe.returncode == 0 else (probe.stderr.strip() or f"unshare exit {probe.returncode}")


def file_size_limit():
    """The other way to refuse a write partway, needing no privilege: RLIMIT_FSIZE (writes past 30 MB fail with
    EFBIG, where a full disk fails them with ENOSPC; Python ignores the SIGXFSZ that comes with it)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (30 * 2**20, 30 * 2**20))


@pytest.mark.parametrize("disk", ["full_tmpfs", "file_size_limit"])
def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_nothing_half_written(workdir, disk):
    argv = [sys.executable, str(ROOT / "tests/signal_at.py"), *FLAGS, "--wandb_mode=disabled", "--output_dir=disk/out"]
    env = clean_env(HOME=str(workdir), SIGNAL="TERM", SIGNAL_AT="evaluation_point")
    if disk == "full_tmpfs":
        if why := tmpfs_refused(workdir):
            pytest.skip(f"cannot mount a tmpfs here ({why}); the file_size_limit case injects the same fault")
        argv = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", ON_TMPFS, "sh", *argv]
        out = workdir / "copied"
    else:
        (workdir / "disk").mkdir()
        out = workdir / "disk/out"
    res = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=PATIENCE,
                         preexec_fn=file_size_limit if disk == "file_size_limit" else None)
    printed = res.stdout + res.stderr
    assert res.returncode == 128 + signal.SIGTERM and "Traceback" not in printed, printed[-3000:]
    assert "checkpoint not saved" in printed and "the run cannot resume" in printed
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "history.csv", "model.safetensors", "summary.json"]
    assert summary_of(out)["checkpoint_error"] and not unlisted_keys(out)


@pytest.mark.slow
def test_out_of_memory_under_a_real_limit_is_recorded(workdir):
    # 256 px images: training at batch 8 and validating 90 images fit in the limit; testing 809 at once does not
    limit = 6 * 2**30  # bytes of address space; a torch process maps about 3 GiB before it computes anything
    argv = ["prlimit", f"--as={limit}", sys.executable, str(ROOT / "train.py"), "--img_size=256", "--epochs=1",
            "--train_samples=16", "--batch_size=8", "--val_fraction=0.05", "--test_fraction=0.45",
            "--wandb_mode=disabled"]
    res = subprocess.run([*argv, "--output_dir=eval"], cwd=workdir, env=clean_env(), capture_output=True, text=True,
                         timeout=PATIENCE)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    s = summary_of(workdir / "eval")
    assert (s["status"], s["oom/phase"]) == ("oom", "test") and math.isnan(s["test/acc"])
    assert s["oom/rss_mb"] > 0 and math.isfinite(s["val/acc_final"])  # what was measured before is kept
    # the same limit with a batch that cannot even train: the CPU allocator's own error
    res = subprocess.run([*argv[:-2], "--batch_size=512", "--train_samples=600", "--output_dir=train"], cwd=workdir,
                         env=clean_env(), capture_output=True, text=True, timeout=PATIENCE)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    s = summary_of(workdir / "train")
    assert (s["status"], s["stop/epoch"], s["oom/batch_size"]) == ("oom", 1, 512)
    assert not unlisted_keys(workdir / "train")


@pytest.mark.slow
def test_an_unreachable_wandb_falls_back_to_offline(workdir):
    env = clean_env(HOME=str(workdir), WANDB_API_KEY="feedface" * 5, WANDB_BASE_URL="http://127.0.0.1:9",
                    WANDB_INIT_TIMEOUT="5")
    res = run([str(ROOT / "train.py"), *TINY, "--epochs=1", "--output_dir=out"], cwd=workdir, env=env)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "cannot reach W&B" in res.stdout and "wandb sync" in res.stdout
    recorded = inspect_wandb(summary_of(workdir / "out")["wandb_run_dir"])
    assert recorded["state"] == "finished" and recorded["summary"]["status"] == "finished"


@pytest.mark.slow
def test_ctrl_c_on_accelerate_launch_saves_both_ranks_and_resumes(workdir):
    flags = [*FLAGS, "--wandb_mode=disabled", "--output_dir=out"]
    # what Ctrl-C does: SIGINT to the launcher and both workers, here right after the first evaluation point
    res = signalled(flags, workdir, clean_env(), "INT", at="evaluation_point", group=True, launch=ACCELERATE_2)
    assert res.returncode != 0  # the launcher reports the signal (exit 1), so W&B's agent requeues the run
    saved = {p.name for p in (workdir / "out/checkpoint").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl", "progress.json"} <= saved, res.stdout[-3000:]
    res = run([*ACCELERATE_2, str(ROOT / "train.py"), *flags], cwd=workdir, env=clean_env())
    assert res.returncode == 0 and "resuming" in res.stdout, res.stderr[-3000:]
    assert [h["update"] for h in runfiles.read_history(workdir / "out/history.csv")] == [1, 2, 3, 4]
    assert json.loads((workdir / "out/summary.json").read_text())["status"] == "finished"
