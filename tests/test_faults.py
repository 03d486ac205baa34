"""W&B's record is the run's truth after every fault: a resume re-logs the points W&B lost and sets the summary
from the whole run, a run whose W&B record was cut is completed by the same command, preemption works the way
clusters and agents deliver it (the whole job, the launcher alone, SIGKILL after a grace period, wandb-core
gone), a resume refuses what would blend two runs, and faults outside the checkpoint (a full disk, out-of-memory
errors in any wording, paths that cannot be written) end as statuses or one-line errors, not tracebacks.

train.py runs as a subprocess with W&B offline; what W&B recorded is read back with W&B's own reader
(`wandb leet inspect`)."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import BIN, PATIENCE, ROOT, TINY, clean_env, run, summary_of

sys.path.insert(0, str(ROOT))
import runfiles  # noqa: E402
import train  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import soak  # noqa: E402  (bench/soak.py: the soak finds wandb-core as these tests do)

FLAGS = [*TINY, "--evals_per_epoch=2"]  # 4 updates an epoch: points at updates 2, 4, 6, 8
ACCELERATE_2 = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
                "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no"]
FINAL_FILES = ["config.json", "history.csv", "model.safetensors", "summary.json"]  # a run that ended, nothing else


# ----------------------------------------------------------------------------------------------
# Running and stopping train.py as a scheduler does

def launch(argv, cwd, env, launcher=(sys.executable,)):
    """train.py in its own session, as a job of its own."""
    return subprocess.Popen([*launcher, str(ROOT / "train.py"), *argv], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition, proc, seconds=PATIENCE, poll=0.01):
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(poll)


def points(out):
    return [h["update"] for h in runfiles.read_history(Path(out) / runfiles.HISTORY)]


def wandb_core(proc, seconds=PATIENCE):
    """The wandb-core process train.py started (W&B puts it in a session of its own), once it exists."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        core = soak.wandb_core(proc)
        if core:
            return core
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    raise AssertionError("no wandb-core process")


def signal_job(proc, sig):
    """What Slurm and systemd do to a job: the signal to every process of it, wandb-core included."""
    core = wandb_core(proc)
    proc.send_signal(sig)
    core.send_signal(sig)


def finish(proc, timeout=PATIENCE):
    printed = proc.communicate(timeout=timeout)[0]
    assert "Traceback" not in printed, printed[-3000:]
    return printed


# ----------------------------------------------------------------------------------------------
# What W&B recorded, read with its own reader, against the run's files

def wandb_records(segment):
    out = subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--json", str(segment)], capture_output=True,
                         text=True, check=True, timeout=PATIENCE)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def wandb_segments(summary):
    """Every W&B run folder of the run (a resumed or completed run has one per start), oldest first."""
    run_dir = Path(summary["wandb_run_dir"])
    run_id = run_dir.name.rsplit("-", 1)[1]
    return sorted(p for p in run_dir.parent.glob(f"*run-*-{run_id}") if any(p.glob("*.wandb")))


def same(recorded, value):
    if isinstance(value, float) and math.isnan(value):
        return recorded is None or (isinstance(recorded, float) and math.isnan(recorded))
    return recorded == value


def assert_wandb_is_the_files(out, exit_code=0):
    """W&B's record of the run in out equals its files: every history.csv row once in W&B's history (the
    segments merged), the last segment's summary equal to summary.json key by key, and the run ended."""
    summary = summary_of(out)
    segments = wandb_segments(summary)
    assert Path(summary["wandb_run_dir"]) == segments[-1], "summary.json names the last W&B run folder"
    logged = {}
    for segment in segments:
        for record in wandb_records(segment):
            if record["type"] == "history" and "update" in record["history"]["item"]:
                logged[record["history"]["item"]["update"]] = record["history"]["item"]
    history = runfiles.read_history(Path(out) / runfiles.HISTORY)
    assert sorted(logged) == [h["update"] for h in history], "W&B's history has the points of history.csv"
    for row in history:
        wrong = [k for k, v in row.items() if not same(logged[row["update"]].get(k), v)]
        assert not wrong, f"W&B's point {row['update']} differs from history.csv in {wrong}"

    last = subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--summary", "--json", str(segments[-1])],
                          capture_output=True, text=True, check=True, timeout=PATIENCE)
    last = json.loads(last.stdout)
    assert last["exit_code"] == exit_code, f"W&B's run ended with {last['exit_code']} ({last['state']})"
    best = {"val/acc": "max", "val/loss": "min"}  # define_metric's summaries
    wrong = {k: (last["summary"].get(k), v) for k, v in summary.items() if k != "wandb_run_dir"
             and not same(last["summary"].get(k, {}).get(best[k]) if k in best else last["summary"].get(k), v)}
    assert not wrong, f"W&B's summary differs from summary.json (W&B, file): {wrong}"


def assert_no_leftovers(out):
    assert sorted(p.name for p in Path(out).iterdir()) == FINAL_FILES
    assert "data/samples_per_rank" in summary_of(out)


# ----------------------------------------------------------------------------------------------
# W&B's record after a resume, a kill, and a run whose W&B finish was cut

@pytest.mark.slow
def test_wandb_summary_after_a_resume_is_the_whole_runs_best(workdir):
    # lr 0.05 overshoots: the lowest val/loss is the first point's, before the checkpoint
    argv = [*TINY, "--evals_per_epoch=4", "--lr=0.05", "--output_dir=out"]
    env = clean_env(HOME=str(workdir), WANDB_MODE="offline")
    cut = launch(argv, workdir, env)
    wait_for(lambda: points(workdir / "out"), cut)
    cut.send_signal(signal.SIGTERM)
    finish(cut)
    assert cut.returncode == 128 + signal.SIGTERM
    stopped = summary_of(workdir / "out")["update"]
    resumed = run([str(ROOT / "train.py"), *argv], cwd=workdir, env=env)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr[-3000:]
    history = runfiles.read_history(workdir / "out/history.csv")
    best = min(history, key=lambda h: h["val/loss"])
    assert best["update"] <= stopped < history[-1]["update"], "the best point is in the preempted part"
    assert_wandb_is_the_files(workdir / "out")


@pytest.mark.slow
def test_a_job_killed_after_its_checkpoint_loses_no_point_in_wandb_and_leaves_nothing(workdir):
    env = clean_env(HOME=str(workdir), WANDB_MODE="offline")
    # a scheduler's grace period runs out after the checkpoint, before W&B's finish: train.py and wandb-core
    # are killed, and wandb-core may not have written the points it was sent. The run kills itself there, once
    # its checkpoint is saved: a test that waits for the checkpoint and then kills may come after W&B's finish.
    cut = ("import os, signal, sys, psutil, train\n"
           "def killed(run):\n"
           "    assert (train.Path('out') / train.runfiles.CHECKPOINT / 'progress.json').exists()\n"
           "    for child in psutil.Process().children(recursive=True):\n"
           "        child.kill()\n"
           "    os.kill(os.getpid(), signal.SIGKILL)\n"
           "train.WandbRun.mark_preempting = killed\n"
           "train.main(sys.argv[1:])\n")
    cut = subprocess.Popen([sys.executable, "-c", cut, *FLAGS, "--output_dir=out"], cwd=workdir, text=True,
                           env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(lambda: points(workdir / "out"), cut)
    cut.send_signal(signal.SIGTERM)
    printed = cut.communicate(timeout=PATIENCE)[0]
    assert cut.returncode == -signal.SIGKILL, printed[-3000:]
    # a kill while a later checkpoint was written leaves a partial checkpoint.tmp (no progress.json)
    (workdir / "out/checkpoint.tmp").mkdir()
    (workdir / "out/checkpoint.tmp/optimizer.bin").write_bytes(bytes(2**20))

    resumed = run([str(ROOT / "train.py"), *FLAGS, "--output_dir=out"], cwd=workdir, env=env)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr[-3000:]
    assert points(workdir / "out") == [2, 4, 6, 8]
    assert_wandb_is_the_files(workdir / "out")
    assert_no_leftovers(workdir / "out")


@pytest.mark.slow
def test_a_finished_run_whose_wandb_record_was_cut_is_completed_by_the_same_command(workdir):
    env = clean_env(HOME=str(workdir), WANDB_MODE="offline")
    argv = [*FLAGS, "--output_dir=out"]
    # killed in its last moments, the job with its wandb-core: summary.json is final, W&B's summary and end are not.
    # The run kills itself there, so that no host is too quick or too slow for the moment.
    cut = ("import os, signal, sys, psutil, train\n"
           "def killed(run, values):\n"
           "    for child in psutil.Process().children(recursive=True):\n"
           "        child.kill()\n"
           "    os.kill(os.getpid(), signal.SIGKILL)\n"
           "train.WandbRun.update_summary = killed\n"
           "train.main(sys.argv[1:])\n")
    killed = run(["-c", cut, *argv], cwd=workdir, env={**env, "PYTHONPATH": str(ROOT)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert summary_of(workdir / "out")["status"] == "finished"

    again = run([str(ROOT / "train.py"), *argv], cwd=workdir, env=env)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert "completed" in again.stdout + again.stderr
    assert_wandb_is_the_files(workdir / "out")
    assert_no_leftovers(workdir / "out")

    # once complete, the same command has nothing to do, and W&B gets no new run folder
    folders = sorted((workdir / "wandb").iterdir())
    files = {p.name: p.read_bytes() for p in (workdir / "out").iterdir()}
    last = run([str(ROOT / "train.py"), *argv], cwd=workdir, env=env)
    assert last.returncode == 0 and "nothing to do" in last.stderr, last.stderr[-3000:]
    assert sorted((workdir / "wandb").iterdir()) == folders
    assert {p.name: p.read_bytes() for p in (workdir / "out").iterdir()} == files


@pytest.mark.slow
def test_wandb_core_killed_as_it_starts_costs_the_run_nothing(workdir):
    # killed as soon as it exists: inside wandb.init, which waits for its port (found by bench/soak.py)
    env = clean_env(HOME=str(workdir), WANDB_MODE="offline")
    argv = [*TINY, "--output_dir=out"]
    proc = launch(argv, workdir, env)
    wandb_core(proc).kill()
    printed = finish(proc)
    assert proc.returncode == 0 and summary_of(workdir / "out")["status"] == "finished", printed[-3000:]
    again = run([str(ROOT / "train.py"), *argv], cwd=workdir, env=env)  # completes W&B's record, if W&B lost any
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert_wandb_is_the_files(workdir / "out")
    assert_no_leftovers(workdir / "out")


@pytest.mark.slow
def test_wandb_core_gone_while_wandb_finishes_costs_the_run_nothing(workdir):
    # wandb-core dies while run.finish waits on it (a job's SIGTERM reaching it late): W&B abandons the pending
    # requests (HandleAbandonedError, a plain Exception) in the run's last moments (found by bench/soak.py)
    cut = ("import sys, threading, time, psutil, train\n"
           "from pathlib import Path\n"
           "real = train.WandbRun.finish\n"
           "def finish(run, exit_code):\n"
           "    core = next(c for c in psutil.Process().children(recursive=True) if 'wandb-core' in c.name())\n"
           "    core.suspend()  # it answers nothing: run.finish waits\n"
           "    log = Path(run.settings.log_user)\n"
           "    def kill_while_waiting():\n"
           "        while 'got exitcode' not in log.read_text():  # W&B's line as run.finish starts waiting\n"
           "            time.sleep(0.01)\n"
           "        core.kill()\n"
           "    threading.Thread(target=kill_while_waiting, daemon=True).start()\n"
           "    real(run, exit_code)\n"
           "train.WandbRun.finish = finish\n"
           "train.main(sys.argv[1:])\n")
    env = clean_env(HOME=str(workdir), WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    argv = [*TINY, "--epochs=1", "--output_dir=out"]
    first = run(["-c", cut, *argv], cwd=workdir, env=env)
    assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr[-3000:]
    assert summary_of(workdir / "out")["status"] == "finished"
    assert "completed W&B's record" in first.stdout, first.stdout[-3000:]  # by a new start of the W&B run
    assert_wandb_is_the_files(workdir / "out")


def test_nothing_in_the_teardown_of_a_run_that_ended_changes_its_exit_code(workdir):
    # A job's SIGTERM with wandb-core gone made a C++ thread abort the teardown of 2 in 5 preempted runs ('terminate
    # called without an active exception', exit -6; found by bench/soak.py, not reproducible on demand). What runs
    # after the records are final, here an exit handler that aborts, must not run at all.
    code = ("import atexit, os, runpy, sys\natexit.register(os.abort)\n"
            "sys.argv = sys.argv[1:]\nsys.path.insert(0, os.path.dirname(sys.argv[0]))  # as `python train.py` has it\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    env = clean_env(HOME=str(workdir), WANDB_MODE="disabled")
    for argv, status in (([*TINY, "--epochs=1", "--output_dir=out"], 0), (["--batch_size=0"], 2)):
        res = run(["-c", code, str(ROOT / "train.py"), *argv], cwd=workdir, env=env)
        assert res.returncode == status, res.stderr[-3000:]


def test_sigterm_is_ignored_once_the_records_are_final_in_a_run_and_in_the_same_command_again(workdir):
    # Python puts the default handlers back as it tears down, where a SIGTERM would end a finished run with -15
    # (found by bench/soak.py after the same command completed W&B's record); train.py ignores it by then
    code = ("import signal, sys, train\ntrain.main(sys.argv[1:])\n"
            "sys.exit(0 if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN else 3)")
    argv = ["-c", code, *TINY, "--epochs=1", "--output_dir=out"]
    env = clean_env(HOME=str(workdir), WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    for ended in ("finished", "nothing to do"):
        res = run(argv, cwd=workdir, env=env)
        assert res.returncode == 0, (ended, res.stderr[-3000:])
    assert "nothing to do" in res.stderr


# ----------------------------------------------------------------------------------------------
# Preemption as clusters and agents deliver it

@pytest.mark.slow
def test_sigterm_to_the_whole_job_then_wandb_core_gone_loses_nothing(workdir):
    env = clean_env(HOME=str(workdir), WANDB_MODE="offline")
    argv = [*FLAGS, "--output_dir=out"]
    # Slurm or systemd stopping the job: SIGTERM to train.py and wandb-core at once. The checkpoint comes first.
    proc = launch(argv, workdir, env)
    wait_for(lambda: points(workdir / "out"), proc)
    signal_job(proc, signal.SIGTERM)
    printed = finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM, printed[-3000:]
    assert summary_of(workdir / "out")["status"] == "preempted"
    assert (workdir / "out/checkpoint/progress.json").exists()

    # the resumed run loses its W&B service midway (wandb-core killed): training goes on to the end
    proc = launch(argv, workdir, env)
    wait_for(lambda: len(points(workdir / "out")) >= 2, proc)
    wandb_core(proc).kill()
    printed = finish(proc)
    assert proc.returncode == 0, printed[-3000:]
    assert "resuming" in printed and "completed W&B's record" in printed  # by a new start of the W&B run
    assert summary_of(workdir / "out")["status"] == "finished" and points(workdir / "out") == [2, 4, 6, 8]

    # and the same command completes W&B's record
    again = run([str(ROOT / "train.py"), *argv], cwd=workdir, env=env)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert_wandb_is_the_files(workdir / "out")
    assert_no_leftovers(workdir / "out")


def command_line(process):
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # it ended (a zombie until its parent reaps it)
        return ""


def rank_processes(launcher, count=2, seconds=PATIENCE):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ranks = [p for p in psutil.Process(launcher.pid).children() if "train.py" in command_line(p)]
        if len(ranks) == count:
            return ranks
        assert launcher.poll() is None, launcher.communicate()[0][-3000:]
        time.sleep(0.05)
    raise AssertionError("the ranks did not start")


def assert_gone(processes, seconds=PATIENCE):
    _, alive = psutil.wait_procs(processes, timeout=seconds)
    for p in alive:
        p.kill()
    assert not alive, "ranks left running after their launcher ended"


@pytest.mark.slow
def test_the_launcher_killed_or_stopped_alone_preempts_every_rank(workdir):
    env = clean_env(HOME=str(workdir))
    argv = [*FLAGS, "--epochs=4", "--wandb_mode=disabled", "--output_dir=out"]  # 2 updates an epoch, 8 in all
    # SIGKILL to `accelerate launch` alone (wandb agent's kill after its grace period, or the OOM killer)
    proc = launch(argv, workdir, env, launcher=ACCELERATE_2)
    ranks = rank_processes(proc)
    wait_for(lambda: points(workdir / "out"), proc)
    proc.kill()
    proc.wait()
    assert_gone(ranks)
    saved = {p.name for p in (workdir / "out/checkpoint").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl", "progress.json"} <= saved
    assert summary_of(workdir / "out")["status"] == "preempted"
    stopped = json.loads((workdir / "out/checkpoint/progress.json").read_text())["updates"]

    # the checkpoint of 2 processes is not resumed by 1: another global batch
    alone = run([str(ROOT / "train.py"), *argv], cwd=workdir, env=env)
    assert alone.returncode == 2 and alone.stderr.count("\n") == 1, alone.stderr[-3000:]
    assert "num_processes=2" in alone.stderr and "global_batch_size=64" in alone.stderr

    # SIGTERM to `accelerate launch` alone, as `wandb agent` stops the command it started
    proc = launch(argv, workdir, env, launcher=ACCELERATE_2)
    ranks = rank_processes(proc)
    wait_for(lambda: points(workdir / "out")[-1:] > [stopped], proc)  # a point of this part
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=PATIENCE)
    assert proc.returncode != 0  # torch's elastic agent reports the signal: the agent requeues the run
    assert_gone(ranks)
    assert json.loads((workdir / "out/checkpoint/progress.json").read_text())["updates"] > stopped
    saved = {p.name for p in (workdir / "out/checkpoint").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= saved


# ----------------------------------------------------------------------------------------------
# A resume checks everything that shapes the run

def git(*argv, cwd):
    subprocess.run(["git", *argv], cwd=cwd, check=True, capture_output=True)


@pytest.mark.slow
def test_a_resume_refuses_other_code_or_precision_unless_told(workdir):
    code = workdir / "code"  # a checkout of its own, to commit to
    code.mkdir()
    for path in ROOT.glob("*.py"):
        shutil.copy(path, code)
    git("init", "-q", cwd=code)
    git("add", ".", cwd=code)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first", cwd=code)
    env = clean_env(HOME=str(workdir))
    argv = [str(code / "train.py"), *FLAGS, "--wandb_mode=offline", "--output_dir=out"]
    proc = subprocess.Popen([sys.executable, *argv], cwd=workdir, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    wait_for(lambda: points(workdir / "out"), proc)
    proc.send_signal(signal.SIGTERM)
    finish(proc)
    first = json.loads((workdir / "out/config.json").read_text())["git_commit"]

    # another precision: refused (a launcher setting counts as a flag)
    other = run(argv, cwd=workdir, env={**env, "ACCELERATE_MIXED_PRECISION": "bf16"})
    assert other.returncode == 2 and other.stderr.count("\n") == 1 and "mixed_precision=no" in other.stderr

    # a new commit, and then uncommitted changes: each refused in one line naming it
    (code / "train.py").write_text((code / "train.py").read_text() + "\n# a change\n")
    other = run(argv, cwd=workdir, env=env)
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr[-3000:]
    assert "git_dirty=False" in other.stderr and "--allow_code_change" in other.stderr
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "second", cwd=code)
    other = run(argv, cwd=workdir, env=env)
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr[-3000:]
    assert f"git_commit={first}" in other.stderr and "git_dirty" not in other.stderr

    # accepted knowingly: the run records both commits
    resumed = run([*argv, "--allow_code_change"], cwd=workdir, env=env)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr[-3000:]
    config = json.loads((workdir / "out/config.json").read_text())
    second = subprocess.run(["git", "rev-parse", "HEAD"], cwd=code, capture_output=True, text=True).stdout.strip()
    assert config["git_commit"] == second and config["git_commits"] == [first, second]
    assert_wandb_is_the_files(workdir / "out")


# ----------------------------------------------------------------------------------------------
# Faults outside the checkpoint: statuses and one-line errors

@pytest.mark.parametrize("message, oom", [
    ("could not create a primitive", True),  # oneDNN, when it cannot allocate its primitive's memory
    ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
     "allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)", True),
    ("MPS backend out of memory (MPS allocated: 1.00 GB, other allocations: 2.00 GB, max allowed: 3.00 GB). "
     "Tried to allocate 256.00 MB on private pool.", True),
    ("XPU out of memory. Tried to allocate 2.00 GiB", True),
    ("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported", True),
    ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", True),
    ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED", True),
    ("std::bad_alloc", True),
    ("could not create a primitive descriptor for a convolution forward propagation primitive", False),
    ("mat1 and mat2 shapes cannot be multiplied (4x512 and 256x10)", False),
])
def test_out_of_memory_in_every_backends_words(message, oom):
    assert train.is_oom(RuntimeError(message)) == oom


def read_only_folder(workdir):
    """A folder no one can write to: a read-only bind mount as root, else a folder without write permission."""
    folder = workdir / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return folder
    if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True).returncode:
        pytest.skip("a read-only bind mount needs root")
    return folder


@pytest.fixture
def unwritable(workdir):
    folder = read_only_folder(workdir)
    (workdir / "a_file").write_text("")
    yield {"read-only": f"{folder}/out", "read-only itself": str(folder),
           "under a file": str(workdir / "a_file" / "out"), "not UTF-8": os.fsdecode(b"out-\xff")}
    subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.mark.parametrize("case, words", [
    ("read-only", "is on a read-only disk"),
    ("read-only itself", "is on a read-only disk"),
    ("under a file", "a_file is a file"),
    ("not UTF-8", "not valid UTF-8"),
])
def test_an_output_folder_that_cannot_be_written_is_refused_before_wandb_starts(workdir, monkeypatch, capsys,
                                                                               unwritable, case, words):
    monkeypatch.chdir(workdir)
    before = sorted(p.name for p in workdir.iterdir())
    with pytest.raises(SystemExit) as exit:
        train.main([*TINY, "--wandb_mode=offline", f"--output_dir={unwritable[case]}"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith("train.py: error: ") and err.count("\n") == 1, err
    assert words in err
    assert sorted(p.name for p in workdir.iterdir()) == before  # no wandb/: refused before W&B started


@pytest.fixture
def tmpfs(workdir):
    """mount(name, size) -> a folder on a file system of that size (tmpfs; needs root)."""
    mounted = []

    def mount(name, size):
        folder = workdir / name
        folder.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode:
            pytest.skip("mounting a tmpfs needs root")
        mounted.append(folder)
        return folder
    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder):
    """Take every free byte of the file system folder is on."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(2**20))
        except OSError:
            pass


@pytest.mark.slow
def test_a_full_disk_under_the_run_is_a_status_and_leaves_nothing_half_written(workdir, tmpfs):
    env = clean_env(HOME=str(workdir), WANDB_MODE="offline")
    # room for config.json and history.csv, not for the best model (19 MB): safetensors' write fails
    small = tmpfs("small", "8m")
    res = run([str(ROOT / "train.py"), *FLAGS, f"--output_dir={small}/out"], cwd=workdir, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stdout + res.stderr, res.stderr[-3000:]
    assert res.stderr.startswith("train.py: error: ") and "No space left on device" in res.stderr
    s = summary_of(small / "out")
    assert s["status"] == "failed" and "model.safetensors" in s["error"] and "No space left" in s["error"]
    assert sorted(p.name for p in (small / "out").iterdir()) == ["config.json", "history.csv", "summary.json"]
    assert points(small / "out") == [2]  # the point was measured; only its model could not be saved
    recorded = json.loads(subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--summary", "--json",
                                          s["wandb_run_dir"]], capture_output=True, text=True).stdout)
    assert recorded["summary"]["status"] == "failed" and recorded["exit_code"] == 2

    # the disk fills while the run is under way: the next file it writes fails, and summary.json too
    disk = tmpfs("disk", "64m")
    proc = launch([*FLAGS, f"--output_dir={disk}/out"], workdir, env)
    wait_for(lambda: points(disk / "out"), proc)
    fill(disk)
    printed = finish(proc)
    assert proc.returncode == 2 and "No space left on device" in printed, printed[-3000:]
    assert points(disk / "out") in ([2], [2, 4])  # history.csv whole, as last written
    left = {p.name for p in (disk / "out").iterdir()}  # summary.json if the failed write freed room for it
    assert {"config.json", "history.csv"} <= left <= {"config.json", "history.csv", "model.safetensors", "summary.json"}
    assert (runfiles.read_json(disk / "out/summary.json") or {"status": "failed"})["status"] == "failed"
    (disk / "filler").unlink()
    again = run([str(ROOT / "train.py"), *FLAGS, f"--output_dir={disk}/out"], cwd=workdir, env=env)
    assert again.returncode == 0 and summary_of(disk / "out")["status"] == "finished", again.stderr[-3000:]
    assert_no_leftovers(disk / "out")


@pytest.mark.slow
def test_a_full_disk_under_wandb_keeps_the_run_and_the_same_command_completes_wandb(workdir, tmpfs):
    # W&B's folder fills after the first point: wandb-core cannot write its log, W&B cannot save the test
    # confusion table at the end. The run is not lost: its files are whole, its status finished.
    wandb_dir = tmpfs("wandb_disk", "64m")
    env = clean_env(HOME=str(workdir), WANDB_MODE="offline", WANDB_DIR=str(wandb_dir))
    argv = [*FLAGS, "--output_dir=out"]
    proc = launch(argv, workdir, env)
    wait_for(lambda: points(workdir / "out"), proc)
    fill(wandb_dir)
    printed = finish(proc)
    assert proc.returncode == 0 and "run the same command to complete it" in printed, printed[-3000:]
    assert summary_of(workdir / "out")["status"] == "finished" and points(workdir / "out") == [2, 4, 6, 8]

    (wandb_dir / "filler").unlink()  # space again: the same command completes W&B's record
    again = run([str(ROOT / "train.py"), *argv], cwd=workdir, env=env)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert_wandb_is_the_files(workdir / "out")
