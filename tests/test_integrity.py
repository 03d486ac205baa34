"""Nothing lost, nothing mixed: a run stopped at any moment resumes exactly, a resume with other flags or a
rerun of a finished run changes nothing, checkpoints survive a cut swap and a full disk, and real memory
limits and an unreachable W&B end as recorded results. train.py runs as a subprocess, W&B offline."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TINY, clean_env, inspect_wandb, run, summary_of

sys.path.insert(0, str(ROOT))
import runfiles  # noqa: E402

FLAGS = [*TINY, "--epochs=2", "--evals_per_epoch=2"]


def start(argv, cwd, env):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(path_exists, proc, seconds=120):
    deadline = time.monotonic() + seconds
    while not path_exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-2000:]
        time.sleep(0.02)


def files(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_stopped_in_setup_resumes_exactly_and_refuses_other_flags_and_reruns(workdir):
    env = clean_env(HOME=str(workdir))
    whole = run([str(ROOT / "train.py"), *FLAGS, "--output_dir=whole"], cwd=workdir, env=env)
    assert whole.returncode == 0, whole.stderr[-2000:]

    # SIGTERM while the run is still setting up (W&B has started, no update yet): a first-epoch checkpoint
    cut = start([*FLAGS, "--output_dir=cut"], workdir, env)
    wait_for(lambda: (workdir / "cut/config.json").exists(), cut)
    cut.send_signal(signal.SIGTERM)
    printed = cut.communicate(timeout=120)[0]
    assert cut.returncode == 128 + signal.SIGTERM, printed[-2000:]
    stopped = summary_of(workdir / "cut")
    assert (stopped["status"], stopped["stop/epoch"]) == ("preempted", 1) and stopped["update"] <= 1
    assert (workdir / "cut/checkpoint/progress.json").exists()

    # another lr, seed or batch size would blend two runs: refused, naming the flags, and nothing is touched
    before = files(workdir / "cut")
    other = run([str(ROOT / "train.py"), *FLAGS, "--lr=0.01", "--seed=3", "--output_dir=cut"], cwd=workdir, env=env)
    assert other.returncode == 2 and other.stderr.count("\n") == 1 and "Traceback" not in other.stderr
    assert "lr=0.002" in other.stderr and "seed=0" in other.stderr
    assert files(workdir / "cut") == before

    # a resume killed hard after its first point: the preempted part's summary (update <= 1) is gone, not left
    # beside a history that goes further (found by bench/soak.py)
    killed = start([*FLAGS, "--output_dir=cut"], workdir, env)
    wait_for(lambda: runfiles.read_history(workdir / "cut/history.csv"), killed)
    killed.kill()
    killed.wait()
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
        proc = start([*FLAGS, "--wandb_mode=disabled", f"--output_dir={name}"], workdir, env)
        wait_for(lambda name=name: (workdir / name / "history.csv").exists(), proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
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


@pytest.fixture
def small_disk(workdir):
    """A 45 MB tmpfs: room for the best model (19 MB), not for a checkpoint (model and optimizer, 57 MB)."""
    disk = workdir / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=45m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_nothing_half_written(workdir, small_disk):
    env = clean_env(HOME=str(workdir))
    proc = start([*FLAGS, "--wandb_mode=disabled", f"--output_dir={small_disk}/out"], workdir, env)
    wait_for(lambda: (small_disk / "out/history.csv").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    printed = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in printed, printed[-3000:]
    assert "checkpoint not saved" in printed and "the run cannot resume" in printed
    assert sorted(p.name for p in (small_disk / "out").iterdir()) == [
        "config.json", "history.csv", "model.safetensors", "summary.json"]
    assert summary_of(small_disk / "out")["checkpoint_error"]


@pytest.mark.slow
def test_out_of_memory_under_a_real_limit_is_recorded(workdir):
    # 256 px images: training at batch 8 and validating 90 images fit in the limit; testing 809 at once does not
    limit = 6 * 2**30  # bytes of address space; a torch process maps about 3 GiB before it computes anything
    argv = ["prlimit", f"--as={limit}", sys.executable, str(ROOT / "train.py"), "--img_size=256", "--epochs=1",
            "--train_samples=16", "--batch_size=8", "--val_fraction=0.05", "--test_fraction=0.45",
            "--wandb_mode=disabled"]
    res = subprocess.run([*argv, "--output_dir=eval"], cwd=workdir, env=clean_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    s = summary_of(workdir / "eval")
    assert (s["status"], s["oom/phase"]) == ("oom", "test") and math.isnan(s["test/acc"])
    assert s["oom/rss_mb"] > 0 and math.isfinite(s["val/acc_final"])  # what was measured before is kept
    # the same limit with a batch that cannot even train: the CPU allocator's own error
    res = subprocess.run([*argv[:-2], "--batch_size=512", "--train_samples=600", "--output_dir=train"], cwd=workdir,
                         env=clean_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    s = summary_of(workdir / "train")
    assert (s["status"], s["stop/epoch"], s["oom/batch_size"]) == ("oom", 1, 512)


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
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
              "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", str(ROOT / "train.py"),
              *FLAGS, "--wandb_mode=disabled", "--output_dir=out"]
    proc = subprocess.Popen(launch, cwd=workdir, env=clean_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: (workdir / "out/history.csv").exists(), proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: SIGINT to the launcher and both workers
    printed = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0  # the launcher reports the signal (exit 1), so W&B's agent requeues the run
    saved = {p.name for p in (workdir / "out/checkpoint").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl", "progress.json"} <= saved, printed[-3000:]
    res = subprocess.run(launch, cwd=workdir, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "resuming" in res.stdout, res.stderr[-3000:]
    assert [h["update"] for h in runfiles.read_history(workdir / "out/history.csv")] == [1, 2, 3, 4]
    assert json.loads((workdir / "out/summary.json").read_text())["status"] == "finished"
