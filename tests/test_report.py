"""lab1/report.py: its statistics and its wording rules on data whose answer is known, the committed report
regenerated from lab1/results/ (tables, figure data, README) with numbers recomputed here from the raw rows and no
number in the README's prose outside a generated block, then the import paths: runs made here, offline
(--from_sweeps) and as wandb.Api returns them (--wandb, --publish), labelled with their own settings.

Expected numbers are computed here straight from the rows (csv, statistics, math), not with report.py's helpers.
"""

import csv
import importlib.util
import itertools
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import time

import pytest
import yaml
from wandb.apis import public
from wandb_workspaces import expr

from conftest import BIN, ROOT, clean_env, inspect_wandb, run

SCRIPT = ROOT / "lab1" / "report.py"
LAB1 = ROOT / "lab1"
T_975 = {2: 4.302653, 4: 2.776445}  # Student t quantiles, from a table, by degrees of freedom


def load_report():
    spec = importlib.util.spec_from_file_location("report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_report(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], check=False, capture_output=True,
                          text=True, timeout=300)


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def outputs(out):
    """Tables, figure data and README: what a regeneration must reproduce. A PNG's bytes are not compared: they
    change with matplotlib's version; figures/<name>.csv holds what each figure draws."""
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.suffix in (".md", ".csv")}


def figures(out):
    return {p.stem for p in (out / "figures").glob("*.png")}


# ----------------------------------------------------------------------------------------------
# The statistics, on data whose answer is known

def test_mean_ci_is_the_t_interval_and_paired_uses_the_seeds_both_have():
    report = load_report()
    xs = [0.91, 0.95, 0.97]
    mean, half, n = report.mean_ci(xs)
    assert n == 3 and mean == pytest.approx(statistics.mean(xs))
    assert half == pytest.approx(T_975[2] * statistics.stdev(xs) / math.sqrt(3), rel=1e-5)
    assert report.mean_ci([0.5]) == (0.5, None, 1) and report.mean_ci([]) == (None, None, 0)
    diff = report.paired({0: 1.0, 1: 2.0, 2: 4.0, 3: 9.0}, {0: 0.5, 1: 1.0, 2: 3.0})  # seed 3 has no pair
    assert diff[0] == pytest.approx(statistics.mean([0.5, 1.0, 1.0])) and diff[2] == 3


def test_best_lr_is_the_vertex_of_a_parabola_in_log_lr_and_nan_when_the_grid_does_not_bracket_it():
    report = load_report()
    grid = [0.05 * 2 ** (i / 2) for i in range(5)]
    updates = {lr: 40 * math.exp(0.3 * (math.log(lr) - math.log(0.09)) ** 2) for lr in grid}
    lr_star, fewest = report.best_lr(updates)
    assert lr_star == pytest.approx(0.09, rel=1e-6) and fewest == min(updates.values())
    falling = {lr: 100 / lr for lr in grid}  # fewer updates all the way to the grid's edge
    assert math.isnan(report.best_lr(falling)[0])
    assert math.isnan(report.best_lr({**updates, grid[0]: math.inf, grid[1]: math.inf, grid[2]: math.inf})[0])


def test_critical_batch_fit_recovers_s_min_and_b_crit():
    report = load_report()
    batches = [8, 32, 128, 512]
    s_min, b_crit = report.fit_critical_batch(batches, [12 * (1 + 90 / b) for b in batches])
    assert s_min == pytest.approx(12, rel=1e-4) and b_crit == pytest.approx(90, rel=1e-4)
    assert all(map(math.isnan, report.fit_critical_batch(batches, [10, math.inf, math.inf, 3])))


def test_steps_cells_count_a_run_that_never_reached_the_target_as_infinite():
    report = load_report()
    rows = [{"run_id": "a", "status": "reached_target", "global_batch_size": 8, "lr_base": 0.1, "seed": 0,
             "target/updates": 120},
            {"run_id": "b", "status": "finished", "global_batch_size": 8, "lr_base": 0.1, "seed": 1,
             "target/updates": math.nan},
            {"run_id": "c", "status": "failed", "global_batch_size": 8, "lr_base": 0.1, "seed": 2}]
    cells = report.steps_cells(rows)
    assert cells == {8: {0.1: {0: 120, 1: math.inf}}}
    assert report.cell_mean(list(cells[8][0.1].values())) == math.inf


def test_comparison_words_follow_their_rules():
    report = load_report()
    lower = {0: -0.03, 1: -0.032, 2: -0.035, 3: -0.031, 4: -0.034}  # every seed below, tightly
    sentence, ok = report.compare("batch 256", "batch 16", lower)
    assert ok and sentence.startswith("batch 256 is 0.032 ± 0.00")
    assert sentence.endswith("below batch 16 in all 5 seeds")
    mixed = {0: 0.05, 1: -0.01, 2: 0.02}  # the interval includes 0: no direction, however the mean leans
    sentence, ok = report.compare("a", "b", mixed)
    assert not ok and "within noise of b" in sentence and "positive in 2 of 3 seeds" in sentence
    assert "above" not in sentence and "below" not in sentence
    assert report.compare("a", "b", {0: 0.5, 1: 0.5, 2: 0.7})[0].endswith("in all 3 seeds")
    assert report.seeds(2, 3) == "2 of 3 seeds" and report.seeds(3, 3) == "all 3 seeds"
    assert report.apart((2, 3), (0, 1)) == 1 and report.apart((0, 2), (1, 3)) == 0
    assert report.apart((783, math.inf), (173, 313)) == 1 and report.apart((math.nan, 1), (0, 1)) == 0
    assert report.ranked({"a": 0.3, "b": 0.1, "c": 0.2}) == "b (0.100), c (0.200) and a (0.300), best to worst"


def test_values_spanning_decades_are_a_median_and_range_not_a_mean():
    report = load_report()
    blown = [44.5, 5.9e6, 7.35e9]  # lr 10's final train losses: a mean ± interval would be the largest one's
    assert report.fmt_summary(blown) == "median 5.90e+06 [44.500, 7.35e+09] (n=3)"
    assert report.fmt_summary([0.9, 1.0, 1.1]).startswith("1.000 ± ")


# ----------------------------------------------------------------------------------------------
# The committed report: lab1/results/ -> tables, figures and README blocks

@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """report.py run once on the committed results, with a copy of the README."""
    tmp = tmp_path_factory.mktemp("report")
    shutil.copyfile(LAB1 / "README.md", tmp / "README.md")
    proc = run_report("--results", LAB1 / "results", "--out", tmp)
    assert proc.returncode == 0, proc.stderr
    return tmp


def test_the_committed_tables_figures_and_readme_are_what_the_results_give(out):
    made, committed = outputs(out), outputs(LAB1)
    assert made.keys() <= committed.keys()
    assert figures(out) == figures(LAB1) == {p.stem for p in made if p.parts[0] == "figures"}
    assert len(made) > 50
    for path, data in made.items():
        assert data == committed[path], path  # the README too: its every table and text block regenerated
    assert "_No results yet" not in (out / "README.md").read_text()


# Numbers the README's prose may hold outside generated blocks: citations, the fixed 95% level and 0 as the null
# value of a difference, and the literature's own figures (McCandlish et al.'s formulas and Table 1).
ALLOWED = [r"(?:et al\.|[A-Z][a-z]+) \(?(?:19|20)\d\d\b", r"eq\. \d+\.\d+", r"Table \d+\b", r"appendix [A-Z]\.\d+",
           r"\b95%", r"(?:excludes|includes) 0\b", r"\(1 \+ ", r"B_crit ≈ 200", r"2–8 times", r"MNIST 900 against 200"]


def prose_numbers(readme):
    """The numbers in the README's own prose: outside generated blocks, code, headings, figure links and the
    references, less the allowed patterns. "1a" or "lab1_lr" hold no number; "1.0", "100" and "√2" do."""
    text = re.sub(r"<!-- (table|text):([\w-]+) -->.*?<!-- /\1:\2 -->", "", readme, flags=re.DOTALL)
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL).split("\n## References")[0]
    found = []
    for line in text.splitlines():
        if not line.startswith(("#", "![")):
            for pattern in ALLOWED:
                line = re.sub(pattern, "", line)
            found += re.findall(r"(?<![\w.])\d+(?:[.,]\d+)*(?!\w)", line)
    return found


def test_the_readme_prose_states_no_number_outside_generated_blocks():
    readme = (LAB1 / "README.md").read_text()
    assert prose_numbers(readme) == []
    assert set(re.findall(r"<!-- text:([\w-]+) -->", readme)) >= {"bn_answer", "steps_answer", "lr_sgd_answer"}
    typed = readme.replace("**Answer.** The figure shows", "**Answer.** lr 100 reaches 1.0, √2 apart. The figure "
                                                            "shows")
    assert prose_numbers(typed) == ["100", "1.0", "2"]
    cited = readme.replace("## 2. Epochs", "## 2. Epochs\n\nAs Smith & Le 2018 and Keskar et al. (2017) argue.")
    assert prose_numbers(cited) == []


def test_the_text_uses_the_words_its_rules_give(out):
    """The statements the second edition typed by hand and got wrong, as the rules now write them."""
    text = " ".join((out / "README.md").read_text().split())  # the README's words, whatever the line breaks
    assert "reaches 1.0" not in text and "is 1.0 in 2 of 3 seeds" in text  # train/acc on noisy labels
    assert re.search(r"the rules rank .*square root \([\d.]+\), best to worst", text)  # the worst, not "but one"
    assert "NaN before" not in text and "after a finite first evaluation in all 3 runs" in text
    assert "2.45e+09 ±" not in text and "median 5.91e+06 [44.539, 7.35e+09]" in text  # lr 10's losses
    assert "steps from 64 to 128, 128 to 256, 256 to 512 and 512 to 1,024 are within noise" in text
    assert "On clean labels, the test accuracy of 15 cosine epochs is 0.006 ± 0.004 above" in text
    assert "lr_base 0.1 with warm-up is within noise of without" in text


def test_figures_draw_each_seed_and_mark_what_is_not_finite(out):
    lr = read(out / "figures" / "lr_sgd.csv")
    diverged = [r for r in results("lab1_lr") if r["status"] == "diverged"]
    nan = [r for r in lr if r["series"] == "lr 100: train/loss" and r["y"] == "nan"]
    assert sorted(float(r["x"]) for r in nan) == sorted(float(r["stop/step"]) for r in diverged)  # where, not a value
    assert len([r for r in lr if r["series"] == "lr 100: train/loss" and r["y"] != "nan"]) == len(diverged)
    steps = read(out / "figures" / "steps.csv")
    never = [r for r in results("lab1_steps_down") if r["status"] == "finished"]  # ran out of epochs: infinitely many
    assert len([r for r in steps if r["panel"] == "0" and r["y"] == "inf"]) == len(never)
    noise = read(out / "figures" / "noise_scale.csv")
    assert any(r["y"] == "inf" for r in noise) and not any(r["y"] == "10000" for r in noise)
    for name in ("bn_diagnosis", "batch_time", "generalisation", "steps"):  # each seed and an interval
        drawn = read(out / "figures" / f"{name}.csv")
        assert any(r["low"] and r["high"] for r in drawn), name
    overfit = read(out / "figures" / "overfitting.csv")
    stopped = [r for r in results("lab1_epochs") if r["status"] == "early_stopped"]
    assert sorted(float(r["x"]) for r in overfit if r["series"] == "early stopping: stop epoch") == sorted(
        float(r["epoch"]) for r in stopped)
    assert {r["x"] for r in overfit if r["series"] == "y scale" and r["panel"] == "1"} == {"linear"}


def results(sweep):
    rows = read(LAB1 / "results" / f"{sweep}.csv")
    for r in rows:
        r.update({k: float(v) for k, v in r.items() if k in ("batch_size", "global_batch_size", "seed", "lr", "lr_base",
                                                             "label_noise")})
    return rows


def cell(table, row, column):
    """A table cell "mean ± half (n=k)" -> (mean, k)."""
    text = read(table)[row][column]
    return float(text.split()[0]), int(text.split("(n=")[1].rstrip(")"))


def test_the_bn_diagnosis_is_the_paired_per_seed_difference(out):
    rows = [r for r in results("lab1_batch_size") if r["status"] == "finished"]
    table = read(out / "tables" / "bn_diagnosis.csv")
    for i, b in enumerate(sorted({r["global_batch_size"] for r in rows})):
        acc = {(r["precise_bn"], r["seed"]): float(r["test/acc"]) for r in rows if r["global_batch_size"] == b}
        diffs = [acc["True", s] - acc["False", s] for p, s in acc if p == "True" and ("False", s) in acc]
        assert float(table[i]["global_batch_size"]) == b
        assert cell(out / "tables" / "bn_diagnosis.csv", i, "precise − running (paired)") == (
            pytest.approx(statistics.mean(diffs), abs=6e-4), len(diffs))


def test_every_results_row_carries_its_commit_and_versions_and_the_training_code_is_one():
    """Sweeps from commits whose training code differs pool only where lab1/replay.py replayed each older sweep's
    run with the other commit's train.py and got every metric back bit for bit."""
    commits = {}
    for path in (LAB1 / "results").glob("*.csv"):
        if path.stem.endswith("_history") or path.name in ("sweep_times.csv", "replay.csv", "gap_line.csv"):
            continue
        rows = read(path)
        assert rows and len({r["git_commit"] for r in rows}) == 1, path  # each sweep from one commit
        assert all(len(r["git_commit"]) == 40 and r["git_dirty"] == "False" and r["torch"] for r in rows), path
        commits.setdefault(rows[0]["git_commit"], []).append(path.stem)
    replays = read(LAB1 / "results" / "replay.csv") if (LAB1 / "results" / "replay.csv").exists() else []

    def same_code(x, y):
        return subprocess.run(["git", "diff", "--quiet", x, y, "--", "train.py", "data.py", "runfiles.py",
                               "instruments.py"], cwd=ROOT, capture_output=True, timeout=60).returncode == 0

    replayed_at = {r["replayed_at"] for r in replays}
    for a, b in itertools.combinations(sorted(commits), 2):
        if same_code(a, b):
            continue  # the commits differ in sweep files and the report, never in what trains
        newer = a if any(same_code(a, c) for c in replayed_at) else b
        older = b if newer == a else a
        for sweep in commits[older]:  # replayed with newer's training code, at newer or a commit with the same code
            rows = [r for r in replays if r["sweep"] == sweep and same_code(r["replayed_at"], newer)]
            assert rows and all(r["same"] == "True" for r in rows), (sweep, newer)


def test_steps_table_counts_each_cells_runs_and_the_noise_scale_is_a_ratio_of_means(out):
    rows = results("lab1_steps")
    table = {float(r["global_batch_size"]): r for r in read(out / "tables" / "steps.csv")}
    for b, lr in [(8.0, 0.1), (512.0, 0.2)]:
        runs = [r for r in rows if r["global_batch_size"] == b and r["lr_base"] == lr]
        reached = [float(r["target/updates"]) for r in runs if r["status"] == "reached_target"]
        expected = f"({len(reached)}/{len(runs)})"
        assert table[b][f"lr_base {lr:g}"].endswith(expected)
        if reached:
            assert float(table[b][f"lr_base {lr:g}"].split()[0]) == pytest.approx(statistics.mean(reached), abs=0.06)
    history = read(LAB1 / "results" / "lab1_noise_scale_history.csv")
    sums = {}
    for h in history:
        if h["noise/trace_sigma"] not in ("", "nan") and h["noise/grad_sq"] not in ("", "nan"):
            s = sums.setdefault(h["run_id"], [0.0, 0.0])
            s[0] += float(h["noise/trace_sigma"])
            s[1] += float(h["noise/grad_sq"])
    pooled = sum(s[0] for s in sums.values()) / sum(s[1] for s in sums.values())
    whole = read(out / "tables" / "noise_scale_run.csv")[0]["value"]
    assert float(whole.split()[0]) == pytest.approx(pooled, abs=0.6)


def test_from_sweeps_never_replaces_results_without_force(tmp_path):
    sweep = tmp_path / "sweeps" / "lab1_one_epoch"
    sweep.mkdir(parents=True)
    shutil.copyfile(LAB1 / "results" / "lab1_one_epoch.csv", sweep / "results.csv")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "lab1_one_epoch.csv").write_text("run_id,status\nkept,finished\n")
    proc = run_report("--from_sweeps", tmp_path / "sweeps", "--results", tmp_path / "results", "--out", tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--force" in proc.stderr
    assert (tmp_path / "results" / "lab1_one_epoch.csv").read_text() == "run_id,status\nkept,finished\n"
    proc = run_report("--from_sweeps", tmp_path / "sweeps", "--results", tmp_path / "results", "--out", tmp_path,
                      "--force")
    assert proc.returncode == 0, proc.stderr
    imported = read(tmp_path / "results" / "lab1_one_epoch.csv")
    assert [r["run_id"] for r in imported] == sorted(r["run_id"] for r in read(sweep / "results.csv"))
    assert {r["git_commit"] for r in imported} == {""}  # no run folders here: no config.json to read it from
    assert (tmp_path / "tables" / "one_epoch.md").exists()


def test_missing_results_is_a_one_line_error(tmp_path):
    proc = run_report("--results", tmp_path / "nowhere", "--out", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--from_sweeps" in proc.stderr


# ----------------------------------------------------------------------------------------------
# The online path, --wandb and --publish, on runs made here: train.py runs under sweep.py, W&B offline, read back
# with W&B's own reader and turned into the objects wandb.Api returns. Nothing here reaches a W&B server.

ENTITY, PROJECT, SWEEP_ID = "lab-team", "lab1", "q7rk2x9d"  # SWEEP_ID: made up, as the W&B server would make it
SWEEPS = ["lab1_lr", "lab1_lr_adam", "lab1_noise_scale", "lab1_steps"]  # the tables a 2-run lr sweep can fill
# Question 3 in miniature: an lr that trains and one that diverges; noise scale on for its tables. Its settings
# are none of the committed sweeps': synthetic data, 64 training images, a global batch of 32 (16 x 2 accumulated),
# lr_base at 32 images and a target of 0.05 (reached at once: chance is 0.1), so that its report must label
# itself from its own runs.
TINY_SWEEP = {
    "program": str(ROOT / "train.py"), "method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
    "parameters": {"lr_base": {"values": [0.01, 1e6]}, "lr_base_size": {"value": 32}, "optimizer": {"value": "sgd"},
                   "seed": {"value": 0}, "dataset": {"value": "synthetic"}, "model": {"value": "resnet10t"},
                   "img_size": {"value": 16}, "train_samples": {"value": 64}, "batch_size": {"value": 16},
                   "grad_accum_steps": {"value": 2}, "noise_scale": {"value": True}, "target_val_acc": {"value": 0.05},
                   "epochs": {"value": 2}}}
SETTINGS = ("dataset", "train_size", "global_batch_size", "num_processes", "grad_accum_steps", "lr", "lr_base_size",
            "target_val_acc")


class RecordedRun(public.Run):
    """wandb.Api's Run, built from the attrs the server sends (as Runs builds it), whose scan_history() gives the
    rows W&B recorded: the real scan_history asks wandb-core to page them from the server."""

    def __init__(self, attrs, history):
        super().__init__(None, ENTITY, PROJECT, attrs["name"], attrs=attrs)
        self.recorded_history = history

    def scan_history(self, keys=None, page_size=1000, min_step=0, max_step=None, use_cache=True):
        return iter(self.recorded_history)


class RecordedApi:
    """wandb.Api at the network boundary: sweep(path) returns W&B's own Sweep, built from attrs, with its runs."""

    def __init__(self, sweep):
        self.recorded_sweep = sweep

    def sweep(self, path):
        assert path == "/".join(self.recorded_sweep.path)
        return self.recorded_sweep


def wandb_records(run_dir):
    """Every record of an offline run's .wandb log, read with W&B's own reader."""
    out = subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--json", str(run_dir)], capture_output=True,
                         text=True, check=True, timeout=60)
    return [json.loads(line) for line in out.stdout.splitlines()]


def recorded_run(run_dir):
    """A W&B offline run as wandb.Api returns it once synced: attrs in the server's shapes (config entries
    {"value": v, "desc": ...}, summaryMetrics and config as JSON strings), the run made by `wandb agent`."""
    seen = inspect_wandb(run_dir)  # config, merged summary (define_metric summaries included), state
    records = wandb_records(run_dir)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    attrs = {"id": f"storage-{seen['run_id']}", "name": seen["run_id"], "displayName": seen["run_id"],
             "state": seen["state"], "sweepName": SWEEP_ID, "group": run.get("run_group"), "tags": [],
             "config": json.dumps({k: {"desc": None, "value": v} for k, v in seen["config"].items()}),
             "summaryMetrics": json.dumps(seen["summary"])}
    return RecordedRun(attrs, [r["history"]["item"] for r in records if r["type"] == "history"])


@pytest.fixture(scope="module")
def online(tmp_path_factory):
    """The tiny sweep run once by sweep.py; its results through the offline path (--from_sweeps) and, from what
    W&B recorded, through --wandb's import; each as the Lab 1 sweeps whose tables it can fill."""
    tmp = tmp_path_factory.mktemp("online")
    (tmp / "lab1_lr.yaml").write_text(yaml.safe_dump(TINY_SWEEP, sort_keys=False))
    # Both runs at once, a thread each (CUDA_VISIBLE_DEVICES means nothing on a CPU): half the CPU time of two
    # runs whose threads spin waiting for each other's cores.
    proc = run([str(ROOT / "sweep.py"), "lab1_lr.yaml", "--sweep_dir", "sweeps/lab1_lr", "--gpus", "0,1"],
               cwd=tmp, env=clean_env(HOME=str(tmp), OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in SWEEPS[1:]:  # the same runs, as each sweep
        shutil.copytree(tmp / "sweeps" / "lab1_lr", tmp / "sweeps" / name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_DIR", str(tmp))  # public.Run makes a folder for its files there
        runs = [recorded_run(d) for d in sorted((tmp / "wandb").glob("offline-run-*"))]
        # `wandb sweep --name lab1_lr sweeps/lab1_lr.yaml` stores the file with its name; the server keeps YAML
        sweep = public.Sweep(None, ENTITY, PROJECT, SWEEP_ID, attrs={
            "name": SWEEP_ID, "state": "FINISHED", "config": yaml.safe_dump({**TINY_SWEEP, "name": "lab1_lr"})})
    sweep.runs = runs
    report = load_report()
    for path in ("offline", "online"):
        (tmp / path / "out").mkdir(parents=True)
        shutil.copyfile(ROOT / "lab1" / "README.md", tmp / path / "out" / "README.md")
    assert report.main(["--from_sweeps", str(tmp / "sweeps"), "--results", str(tmp / "offline" / "results"),
                        "--out", str(tmp / "offline" / "out")]) == 0
    report.import_wandb(f"{ENTITY}/{PROJECT}/{SWEEP_ID}", tmp / "online" / "results", api=RecordedApi(sweep))
    for name in SWEEPS[1:]:
        report.import_wandb(f"{ENTITY}/{PROJECT}/{SWEEP_ID}", tmp / "online" / "results", name, RecordedApi(sweep))
    assert report.main(["--results", str(tmp / "online" / "results"), "--out", str(tmp / "online" / "out")]) == 0
    return {"tmp": tmp, "runs": runs, "sweep": sweep, "report": report}


def test_wandb_import_makes_the_tables_and_figures_of_the_offline_path(online):
    offline, imported = online["tmp"] / "offline" / "out", online["tmp"] / "online" / "out"
    made = outputs(imported)
    assert figures(imported) == figures(offline) == {"lr_sgd", "lr_adam", "noise_scale", "steps", "steps_pow2"}
    assert {p.stem for p in made if p.suffix == ".csv"} >= {"lr_sgd", "lr_adam", "noise_scale", "provenance", "steps"}
    assert made == outputs(offline)


def test_a_sweep_at_another_target_and_dataset_labels_itself(online):
    """Each run's settings come from its config.json, and the report's labels from them: the tiny sweep's target,
    training-set size, global batch and lr_base_size, never the committed sweeps' 0.97, 1,259 and 256."""
    sweep = online["tmp"] / "sweeps" / "lab1_steps"
    for row in read(online["tmp"] / "offline" / "results" / "lab1_steps.csv"):
        config = json.loads((sweep / row["run_id"] / "config.json").read_text())
        assert {k: row[k] for k in SETTINGS} == {k: str(config[k]) for k in SETTINGS}
        assert (row["dataset"], row["train_size"], row["global_batch_size"]) == ("synthetic", "64", "32")
        assert float(row["lr"]) == float(row["lr_base"]) * 32 / 32  # train.py's rule, processes and accumulation in
    out = online["tmp"] / "offline" / "out"
    readme = (out / "README.md").read_text()
    made = "\n".join([*re.findall(r"<!-- (?:table|text):[\w-]+ -->\n(.*?)<!--", readme, flags=re.DOTALL),
                      *(p.read_text() for p in sorted(out.glob("*/*.csv")))])
    words = " ".join(made.split())
    for label in ("updates to 0.05 (grid best)", "validation accuracy ≥ 0.05", "lr = lr_base × B/32",
                  "`synthetic` at 16×16 pixels", "64 train / 500 validation / 1,000 test", "batch 32,",
                  "updates to val/acc 0.05"):
        assert label in words, label
    for stale in ("0.97", "1,259", "1259", "256 images", "B/256", "batch 16,"):
        assert stale not in words, stale


def test_wandb_import_takes_params_from_the_config_and_metrics_from_the_summary(online):
    rows = read(online["tmp"] / "online" / "results" / "lab1_lr.csv")  # named by the sweep's name in W&B
    by_id = {r.id: r for r in online["runs"]}
    assert sorted(float(r["lr"]) for r in rows) == [0.01, 1e6]  # the resolved lr, a setting from the config
    assert any(float(r["lr"]) != by_id[r["run_id"]].summary_metrics["train/lr"] for r in rows)  # the last scheduled one
    for r in rows:
        best = by_id[r["run_id"]].summary_metrics["val/acc"]
        assert best == {"max": float(r["val/acc"])}  # define_metric's summary, unwrapped
    assert {r["run_id"]: r["status"] for r in rows} == {r.id: r.summary_metrics["status"] for r in online["runs"]}
    diverged = [r for r in online["runs"] if r.summary_metrics["status"] == "diverged"]
    assert len(diverged) == 1 and diverged[0].state == "finished"  # W&B says finished; train.py's status wins
    history = read(online["tmp"] / "online" / "results" / "lab1_lr_history.csv")
    assert len(history) == 2 + 1  # two evaluation points of the trained run, one before the divergence


def selects(filters, run):
    """Whether a Runset's filter string, parsed by wandb_workspaces as the W&B app gets it, selects this run."""

    def value(key):
        if key.section == "run":
            return {"sweep": run.sweep_name, "group": run.group}[key.name]
        return (run.summary_metrics if key.section == "summary" else run.config).get(key.name)

    def holds(f):
        if f.op in ("AND", "OR"):
            return (all if f.op == "AND" else any)(holds(g) for g in f.filters)
        return {"=": value(f.key) == f.value, "IN": value(f.key) in f.value}[f.op]

    return holds(expr.expr_to_filters(filters))


def panel_keys(panel):
    """(config keys, summary keys, history keys) that one Report panel reads."""
    name = type(panel).__name__
    by = [panel.groupby.name] if getattr(panel, "groupby", None) else []
    if name == "BarPlot":
        return by, panel.metrics, []
    if name == "LinePlot":
        return by, [], [panel.x, *panel.y]
    if name == "ScatterPlot":
        return [panel.x.name], [panel.y.name], []
    columns = [c.metric for c in panel.columns]  # ParallelCoordinatesPlot
    return ([c.name for c in columns if type(c).__name__ == "Config"],
            [c.name for c in columns if type(c).__name__ == "SummaryMetric"], [])


@pytest.mark.parametrize("by", ["sweep", "group"])
def test_published_report_shows_the_sweeps_completed_runs_with_keys_they_have(online, by):
    report = online["report"]
    runs = online["runs"]
    ids = report.sweep_ids([online["sweep"]]) if by == "sweep" else {}  # agent runs; or runs from `wandb sync`
    readme = (online["tmp"] / "online" / "out" / "README.md").read_text()
    grids = [b for b in report.build_report(ENTITY, PROJECT, readme, ids).blocks if type(b).__name__ == "PanelGrid"]
    lr_grids = [g for g in grids if g.runsets[0].name == "lab1_lr"]
    assert lr_grids and all(by.capitalize() in g.runsets[0].filters for g in lr_grids)
    completed = sorted(r.id for r in runs if r.summary_metrics["status"] == "finished")
    for grid in lr_grids:
        assert sorted(r.id for r in runs if selects(grid.runsets[0].filters, r)) == completed
    config = set.intersection(*(set(r.config) for r in runs))
    summary = set.intersection(*(set(r.summary_metrics) for r in runs if r.id in completed))
    history = set.intersection(*(set(row) for r in runs for row in r.recorded_history if "epoch" in row))
    for panel in (p for g in grids if g.runsets[0].name in SWEEPS for p in g.panels):  # the sweeps of these runs
        used = panel_keys(panel)
        assert used[0] or used[1] or used[2]
        assert set(used[0]) <= config and set(used[1]) <= summary and set(used[2]) <= history, used


def test_report_text_follows_the_readme():
    """Every heading, line of prose and table of lab1/README.md is in the Report, each figure a panel grid, and a
    section added to the README is added to the Report."""
    report = load_report()
    readme = (ROOT / "lab1" / "README.md").read_text() + (
        "\n## 5. A new question\n\nShort answer: it depends.\n\n<!-- table:lr -->\n| lr | n |\n|---|---|\n"
        "| 0.1 | 3/3 |\n<!-- /table:lr -->\n\n![the same figure](figures/lr_sgd.png)\n")
    built = report.build_report(ENTITY, PROJECT, readme, {})
    kinds = [type(b).__name__ for b in built.blocks]
    assert built.title == readme.splitlines()[0][2:]
    assert [b.text for b in built.blocks if type(b).__name__ == "H1"] == [
        line[3:] for line in readme.splitlines() if line.startswith("## ")]
    figures = [line for line in readme.splitlines() if line.startswith("![")]
    assert kinds.count("PanelGrid") == len(figures)
    text = "\n".join(b.text for b in built.blocks if type(b).__name__ == "MarkdownBlock").splitlines()
    prose = [line for line in readme.splitlines()[1:]
             if line.strip() and not line.startswith(("## ", "![", "<!-- "))]
    assert [line for line in text if line.strip()] == prose
    assert kinds[-3:] == ["H1", "MarkdownBlock", "PanelGrid"]


@pytest.mark.parametrize("key", ["", "a" * 40], ids=["not logged in", "no network"])
def test_wandb_errors_are_one_line_and_quick(tmp_path, key):
    env = clean_env(HOME=str(tmp_path), **({"WANDB_API_KEY": key} if key else {}))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--wandb", f"{ENTITY}/{PROJECT}/{SWEEP_ID}", "--results",
                           str(tmp_path / "results"), "--out", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "wandb login" in proc.stderr and "Traceback" not in proc.stderr
    # wandb-core's retries end before wandb.Api's timeout: no 10-minute hang at exit (quick is 15 s on a quiet
    # host; the bound leaves room for a busy one)
    assert time.monotonic() - start < 180
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("args", [["--wandb", "lab1/q7rk2x9d"], ["--publish", "lab-team"],
                                  ["--wandb", "a/b/c", "--wandb", "a/b/d", "--sweep_name", "lab1_lr"]])
def test_bad_wandb_arguments_are_one_line_before_anything_runs(tmp_path, capsys, args):
    assert load_report().main([*args, "--results", str(tmp_path / "results"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("report.py: error: --")
    assert not (tmp_path / "results").exists()


def test_replay_rebuilds_a_runs_command_from_its_sweep_file_at_its_commit():
    sys.path.insert(0, str(LAB1))
    import replay

    import runfiles

    row = next(r for r in runfiles.read_results(LAB1 / "results" / "lab1_batch_lr.csv") if r["batch_size"] == 256)
    args = replay.command("lab1_batch_lr", row)
    assert "--batch_size=256" in args and f"--seed={row['seed']}" in args and f"--lr={row['lr']}" in args
    assert "--config=lab1/train_defaults.yaml" in args  # a fixed value of the sweep file, as it was then


# ----------------------------------------------------------------------------------------------
# Q3's edges and Q2's memorisation (lab1_edge, lab1_lr_slow, lab1_memorisation), on rows whose answer is known

def test_sharpness_is_read_against_the_momentum_sgd_bound():
    report = load_report()
    assert report.stability_bound(0.1, 0.9) == pytest.approx(38) and report.stability_bound(1, 0) == 2
    points = [(10, 19.0), (20, 76.0), (30, math.nan), (40, 114.0), (50, 38.0)]  # a NaN is not a measurement
    got = report.against_bound(points, 38)
    assert got["largest"] == 114 and got["last"] == 38 and got["nonfinite"] == 1
    assert got["above"] == 0.5  # 76 and 114 of 19, 76, 114, 38: the bound itself is not above it
    assert got["late"] == pytest.approx(2)  # median of the second half (114, 38) = 76, twice the bound
    assert got["peak"] == pytest.approx(3) and got["flat"] == 0 and got["measured"] == 4
    assert report.against_bound([(10, 1e-6), (20, -2e-5), (30, 5.0)], 38)["flat"] == 2  # a dead network's zero
    assert report.against_bound([(10, math.inf), (20, 10.0)], 38)["above"] == 0.5  # inf counts as above
    assert report.against_bound([(10, math.nan)], 38) is None

    def stats(peaks, lates):
        return [{"peak": p, "late": q} for p, q in zip(peaks, lates, strict=True)]

    regime = report.sharpness_regime
    assert regime(stats([1.1, 0.9, 1.3], [0.2, 0.1, 0.3]), True) == (
        "reaches the bound and then, over its second half, sits below it in all 3 seeds: cut back once it reaches "
        "the bound, as in the catapult (Lewkowycz et al. 2020), rather than hovering at it (the edge of stability, "
        "Cohen et al. 2021)", True)  # a peak of 0.9 is within a factor √2 of the bound
    assert regime(stats([0.2, 0.3, 0.5], [0.1, 0.1, 0.1]), True)[0].startswith("stays below the bound in all 3")
    assert regime(stats([1.2, 1.0, 1.3], [1.0, 1.3, 0.8]), True)[0].startswith("hovers at the bound in all 3 seeds")
    assert regime(stats([3, 4, 5], [2, 3, 4]), True) == ("stays above the bound in all 3 seeds, while it trains", True)
    assert regime(stats([3, 1, 0.5], [2, 1, 0.1]), False) == (
        "in its second half is below the bound in 1, at the bound in 1 and above the bound in 1 of the 3 seeds", False)
    assert regime(stats([1.1, 0.2], [0.1, 0.1]), True) == (
        "ends below the bound in both seeds, after reaching it in 1 of 2 seeds", False)


def test_the_band_ends_at_the_first_lr_that_fails_and_a_diverged_run_fails():
    report = load_report()
    assert report.band_edge({0.1: True, 0.2: True, 0.4: False, 0.8: True}) == (0.2, 0.4)
    assert report.band_edge({0.1: True, 0.2: True}) == (0.2, None)
    assert report.band_edge({0.1: False, 0.2: True}) == (None, 0.1)
    good = [{"status": "finished", "val/acc_final": a} for a in (0.95, 0.97, 0.91)]
    assert report.trains(good) and not report.trains(good[:2] + [{"status": "finished", "val/acc_final": 0.89}])
    assert not report.trains(good[:2] + [{"status": "diverged"}])  # counted, not dropped
    assert not report.trains([])


def test_curves_are_matched_at_equal_lr_times_updates():
    report = load_report()
    history = [{"run_id": "a", "update": u, "train/loss": 1.0} for u in (5, 10)]
    assert report.lr_time(history, "a", 0.1, "train/loss") == [(0.5, 1.0), (1.0, 1.0)]
    assert report.lr_time(history, "a", 0.1, "train/loss", middle=True) == [(0.25, 1.0), (0.75, 1.0)]
    # heavy ball under a constant gradient: velocity 1, 1.5, 1.75, ... (m = 0.5), so 3 updates move 4.25 plain steps,
    # over 1/(1 - m) = 2: 2.125, that is 3 - 0.5 (1 - 0.125) / 0.5
    assert report.momentum_steps(3, 0.5) == pytest.approx((1 + 1.5 + 1.75) / 2)
    assert report.momentum_steps(3, 0.0) == 3
    assert report.momentum_steps(1000, 0.9) == pytest.approx(1000 - 9)  # a lag of m / (1 - m) updates
    assert report.lr_time(history, "a", 0.1, "train/loss", momentum=0.5)[0][0] == pytest.approx(
        0.1 * (5 - 0.5 * (1 - 0.5 ** 5) / 0.5))

    def loss(x):  # one curve in lr x updates, linear so that interpolation is exact
        return 2.0 - 10 * x

    slow = [(1e-4 * u, loss(1e-4 * u)) for u in range(19, 400, 19)]  # 0.0019 to 0.038
    fast = [(1e-3 * u, loss(1e-3 * u)) for u in (5, 10, 14, 19, 24, 29, 33, 38, 43, 48, 52, 57)]  # 0.005 to 0.057
    gaps = report.gap(slow, fast)
    assert [x for x, _ in gaps] == [x for x, _ in slow if x >= 0.005]  # only where both curves are
    assert all(d == pytest.approx(0, abs=1e-12) for _, d in gaps)
    shifted = report.gap([(x, y + 0.3) for x, y in slow], fast)
    assert all(d == pytest.approx(0.3) for _, d in shifted)
    assert report.agreement([0.001, -0.001, 0.0005], 1.0) == "agree"  # interval within ±10% of the fall
    assert report.agreement([0.3, 0.32, 0.31], 1.0) == "differ"
    assert report.agreement([0.3, -0.2, 0.1], 1.0) == "not resolved"
    assert report.agreement([0.001], 1.0) == "not resolved"


def test_early_stopping_is_replayed_as_train_py_stops():
    report = load_report()
    losses = [1.0, 0.8, 0.9, 0.7, 0.75, 0.76, 0.77, 0.78, 0.79, 0.6]
    points = list(zip(range(1, 11), losses, strict=True))
    assert report.early_stop(points, 5) == (9, 4)  # 5 points after the lowest (epoch 4): stops at 9, keeps 4
    assert report.early_stop(points, 6) == (None, 10)  # epoch 10 is lower before patience runs out
    assert report.early_stop([(1, math.nan), (2, 1.0), (3, 1.0), (4, 1.1)], 2) == (4, 2)  # NaN is never best
    per_epoch = {1: [0.01, 0.02, 0.03], 2: [0.05, 0.2, 0.09], 3: [0.3, 0.32, 0.31], 4: [0.5, 0.6, 0.55]}
    assert report.first_above(per_epoch, 0.1) == 3  # epoch 2's mean is above 0.1 but its interval is not
    assert report.first_above(per_epoch, 0.9) is None


def synthetic_report(tmp_path, sweeps):
    """A Report whose loaded results are the given {sweep: (rows, history)}, each history row carrying its run's
    parameters as load_results gives them."""
    report = load_report()
    rep = report.Report(tmp_path, tmp_path)
    for rows, history in sweeps.values():
        runs = {r["run_id"]: r for r in rows}
        for h in history:
            h.update({k: runs[h["run_id"]].get(k) for k in ("status", "seed", "lr", "num_classes")})
    rep.loaded = sweeps
    return report, rep


def test_the_edge_section_finds_the_band_and_counts_diverged_runs(tmp_path):
    rows, history = [], []
    for lr, acc in ((0.1, 0.97), (0.2, 0.95), (0.4, 0.5), (10.0, None)):
        for seed in range(3):
            run = f"{lr}-{seed}"
            rows.append({"run_id": run, "lr": lr, "seed": seed, "momentum": 0.9, "epochs": 3, "update": 20,
                         "status": "diverged" if acc is None else "finished", "num_classes": 10,
                         **({} if acc is None else {"val/acc_final": acc + 0.01 * seed})})
            bound = 3.8 / lr
            ratio = 2.0 if lr < 0.3 else 1.0 + seed / 20
            history += [{"run_id": run, "update": u, "sharpness/top_eig": bound * ratio} for u in (10, 20)]
    report, rep = synthetic_report(tmp_path, {"lab1_edge": (rows, history)})
    report.section_edge(rep)
    table = rep.blocks["table:edge"]
    assert "| 10 | 0.38 | 3 | 3/3 | n/a (n=0) | 0/3 |" in table  # diverged: counted, no accuracy made up
    assert "| 0.1 | 38.00 | 3 | 0/3 |" in table and "| 100% |" in table
    answer = " ".join(rep.blocks["text:edge_answer"].split())
    assert "the largest lr that trains" in answer and "is 0.2 (" in answer and "the first that fails is 0.4" in answer
    assert "stays above the bound in all 3 seeds, while it trains" in answer  # lr 0.1 and 0.2: twice the bound
    assert "**lr 0.4** (bound 9.50, fails): the sharpness hovers at the bound in all 3 seeds" in answer  # 1 to 1.1
    drawn = read(tmp_path / "figures" / "edge.csv")
    assert len([r for r in drawn if r["series"] == "lr 10: val/acc_final" and r["y"] == "nan"]) == 3


def test_the_memorisation_section_marks_early_stopping_per_seed(tmp_path):
    rows, history = [], []
    for seed in range(3):
        run = f"m{seed}"
        rows.append({"run_id": run, "seed": seed, "status": "finished", "label_noise": 0.2, "epochs": 12,
                     "train_size": 1259, "num_classes": 10, "val/acc_final": 0.9})
        for e in range(1, 13):
            best = 3 + seed  # val/loss lowest at epoch 3, 4, 5
            history.append({"run_id": run, "epoch": e, "val/loss": 0.3 + 0.01 * (e - best) ** 2, "val/acc": 0.9,
                            "train/acc_clean": 0.95, "train/acc_noisy": 0.02 * e + 0.05 * max(0, e - 4) + 0.005 * seed,
                            "train/acc_noisy_true": 0.8})
    report, rep = synthetic_report(tmp_path, {"lab1_memorisation": (rows, history)})
    report.section_memorisation(rep)
    drawn = read(tmp_path / "figures" / "memorisation.csv")
    stops = sorted(float(r["x"]) for r in drawn if r["series"] == "early stopping: stop epoch")
    assert stops == [8.0] * 3 + [9.0] * 3 + [10.0] * 3  # patience 5 after epoch 3, 4, 5; on each of 3 panels
    assert "| 3 |" in rep.blocks["table:memorisation"] and rep.blocks["table:memorisation"].count("| 0 |") == 1
    answer = " ".join(rep.blocks["text:memorisation_answer"].split())
    assert "keeps the weights of epoch 3, 4 and 5 (seeds 0, 1 and 2)" in answer
    assert "first lies above chance (its 95% interval wholly above 0.10) at epoch 5, at or before the epoch whose " \
           "weights early stopping keeps in 1 of 3 seeds" in answer  # 0.155 ± 0.012; kept epochs 3, 4 and 5
    # at the kept epochs 3, 4, 5: 0.06, 0.085, 0.16, that is -0.04, -0.015, +0.06 from chance
    assert "the accuracy on the wrong labels is within noise of chance" in answer
    # at epoch 12: 0.64, 0.645, 0.65; at epoch 1: 0.02, 0.025, 0.03
    assert "at epoch 12, accuracy on the wrong labels is 0.620 ± 0.000 above its value at epoch 1 in all 3 seeds" \
           in answer
    assert "as Arpit et al. (2017) describe" in answer  # and clean (0.95) far above the wrong labels at epoch 1


@pytest.mark.parametrize("m", [0.0, 0.9])
def test_the_slow_lr_section_calls_a_curve_on_gradient_flow_only_slow(tmp_path, m):
    def loss(lr, u):  # one curve in the distance heavy ball moves under a constant gradient, linear in it
        return 2.3 - 30 * lr * (u - m * (1 - m ** u) / (1 - m))

    slow, grid, slow_history, grid_history = [], [], [], []
    for seed in range(3):
        slow.append({"run_id": f"s{seed}", "seed": seed, "lr": 1e-4, "status": "finished", "epochs": 20, "momentum": m,
                     "update": 380, "val/acc_final": 0.8, "train/loss": 1.2, "num_classes": 10})
        slow_history += [{"run_id": f"s{seed}", "update": u, "train/loss": (loss(1e-4, u) + loss(1e-4, u - 19)) / 2
                          + 0.001 * seed, "val/acc": 0.5} for u in range(19, 381, 19)]
        for lr, acc in ((1e-3, 0.9), (1e-2, 0.98)):
            grid.append({"run_id": f"g{lr}{seed}", "seed": seed, "lr": lr, "status": "finished", "epochs": 3,
                         "momentum": m, "update": 57, "val/acc_final": acc + 0.01 * seed, "num_classes": 10})
            grid_history += [{"run_id": f"g{lr}{seed}", "update": u, "train/loss": (loss(lr, u) + loss(lr, u - 5)) / 2,
                              "val/acc": 0.5} for u in range(5, 58, 5)]
    report, rep = synthetic_report(tmp_path, {"lab1_lr_slow": (slow, slow_history), "lab1_lr": (grid, grid_history)})
    report.section_lr_slow(rep)
    answer = " ".join(rep.blocks["text:lr_slow_answer"].split())
    assert "the curves agree: lr 0.0001 is only slow" in answer
    assert "below `lab1_lr`'s best lr (0.01) after 3 in all 3 seeds" in answer
    assert rep.findings[0][0] and rep.findings[0][2] == "3b"
    if m:  # in plain lr × updates the momentum lag (9 updates: 0.009 at lr 0.001) puts lr 0.0001 ahead
        assert "lr 0.0001's train loss is 0.182 ± 0.002 below lr 0.001's in all 3 seeds;" in answer


# ----------------------------------------------------------------------------------------------
# Question 1's gap (1e), GroupNorm's own lr (1f) and equal examples (1g), on synthetic rows whose answer is known

def test_grid_best_is_the_best_mean_and_says_when_it_is_the_grids_edge():
    report = load_report()

    def rows(scores):
        return [{"status": "finished", "lr": lr, "seed": s, "val/acc_final": v + 0.001 * s}
                for lr, v in scores.items() for s in range(3)]

    assert report.grid_best(rows({0.001: 0.95, 0.002: 0.97, 0.004: 0.96})) == (0.002, None)
    assert report.grid_best(rows({0.004: 0.95, 0.008: 0.96, 0.016: 0.97})) == (0.016, "highest")
    assert report.grid_best(rows({0.001: 0.97, 0.002: 0.97})) == (0.001, "lowest")  # a tie: the smaller lr
    failed = [{"status": "failed", "lr": 0.1, "seed": 0}]
    assert report.grid_best(rows({0.001: 0.9, 0.01: 0.8}) + failed) == (0.001, "lowest")  # tried, so an end
    assert report.grid_best(failed) == (None, None)
    assert report.monotone([(-0.5, 9), (0, 0.1), (0.5, 0.2), (1, 0.2), (1.5, 0)])  # only [0, 1] counts
    assert report.monotone([(0, 0.3), (0.5, 0.2), (1, 0.1)]) and not report.monotone([(0, 0.1), (0.5, 0.3), (1, 0.2)])


def test_sharpness_ratios_are_compared_as_a_geometric_mean_in_log_space():
    report = load_report()
    ratios = {s: 2 * 1.1 ** s for s in range(5)}
    logs = [math.log(r) for r in ratios.values()]
    half = T_975[4] * statistics.stdev(logs) / math.sqrt(5)
    centre, low, high, n = report.ratio_ci(ratios)
    assert n == 5 and centre == pytest.approx(math.exp(statistics.mean(logs)))
    assert (low, high) == (pytest.approx(math.exp(statistics.mean(logs) - half)),
                           pytest.approx(math.exp(statistics.mean(logs) + half)))
    sentence, ok = report.compare_ratio("batch 256's", "batch 16's", ratios)
    assert ok and sentence == (f"batch 256's is {centre:.2f} [{low:.2f}, {high:.2f}] times batch 16's, above 1 in "
                               "all 5 seeds")
    sentence, ok = report.compare_ratio("a", "b", {0: 0.5, 1: 2.0, 2: 1.5})  # the interval includes 1
    assert not ok and "within noise of b" in sentence and "above 1 in 2 of 3 seeds" in sentence
    assert report.compare_ratio("a", "b", {0: 0.5, 1: 0.4, 2: 0.45})[0].endswith("below 1 in all 3 seeds")
    assert report.ratio_ci({0: 2.0, 1: -1.0, 2: 3.0})[3] == 2  # a non-positive ratio has no log: left out


def test_a_barrier_is_the_highest_loss_between_the_ends_above_the_higher_end():
    report = load_report()
    bump = [(-0.5, 3.0), (0, 0.1), (0.25, 0.5), (0.5, 0.9), (0.75, 0.4), (1, 0.2), (1.5, 5.0)]
    assert report.barrier(bump) == pytest.approx(0.9 - 0.2)  # outside [0, 1] does not count
    valley = [(0, 0.3), (0.5, 0.05), (1, 0.2)]
    assert report.barrier(valley) == pytest.approx(0.05 - 0.3)
    assert math.isnan(report.barrier([(0, 0.1), (1, 0.2)])) and math.isnan(report.barrier([(0, 0.1), (0.5, 1)]))


def test_held_equal_names_what_two_sets_of_runs_share():
    report = load_report()
    epochs16 = [{"epoch": 3.0, "update": 234, "examples": 3744, "lr": 0.002}]
    epochs256 = [{"epoch": 3.0, "update": 12, "examples": 3072, "lr": 0.002}]
    examples16 = [{"epoch": 192 / 78, "update": 192, "examples": 3072, "lr": 0.002}]
    assert report.held_equal(epochs16, epochs256) == ["epochs", "lr"]
    assert report.held_equal(examples16, epochs256) == ["images seen", "lr"]
    tuned = [{"epoch": 3.0, "update": 12, "examples": 3072, "lr": 0.016}]
    assert report.held_equal(epochs16, tuned) == ["epochs"]
    assert report.held_equal(epochs16 + [{**epochs16[0], "lr": 0.001}], epochs256) == ["epochs"]  # lr not one value
    assert report.verdict({"a": 1, "b": 0, "c": -1, "d": 1}) == (
        "they support a and d; they go against c; they do not resolve b")


GAP_SEEDS = range(5)
# test/acc per seed at each one's best lr; sharpness per seed: batch 256's is batch 16's times 2 × 1.05^seed
GAP_TEST = {"small": [0.99, 0.985, 0.992, 0.988, 0.99], "plain": [0.97, 0.968, 0.975, 0.965, 0.972],
            "ghost": [0.972, 0.975, 0.974, 0.97, 0.98]}
GAP_SHARP = {"small": [10 + s for s in GAP_SEEDS], "plain": [2 * 1.05 ** s * (10 + s) for s in GAP_SEEDS],
             "ghost": [15.0 + s for s in GAP_SEEDS]}
GAP_GRID = {"small": (16, 0, {0.0005: 0.95, 0.001: 0.98, 0.002: 0.97}),  # batch, ghost, mean val/acc_final per lr
            "plain": (256, 0, {0.004: 0.93, 0.008: 0.95, 0.016: 0.96}),
            "ghost": (256, 16, {0.004: 0.94, 0.008: 0.97, 0.016: 0.95})}
BEST = {"small": 0.001, "plain": 0.016, "ghost": 0.008}
LINE_END = [0.02, -0.02, 0.01, -0.01, 0.0]  # the batch-256 model's train loss less the batch-16 one's, per seed
GN_VAL = {(16, 0.0005): 0.9, (16, 0.001): 0.95, (16, 0.002): 0.96, (16, 0.004): 0.94, (16, 0.008): 0.9,
          (256, 0.0005): 0.3, (256, 0.001): 0.35, (256, 0.002): 0.4, (256, 0.004): 0.5, (256, 0.008): 0.6}


def write_rows(path, rows):
    head = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, head, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def gap_results(folder):
    """Synthetic results of 1e, 1f and 1g: lab1_gap_16, lab1_gap_256 (with a history each), its line, the
    GroupNorm grid with lab1_groupnorm's lr, lab1_batch_size's precise-BN runs and lab1_equal_examples."""
    folder.mkdir()
    common = {"status": "finished", "optimizer": "adamw", "scheduler": "cosine", "epochs": 3, "epoch": 3.0,
              "git_commit": "a" * 40}
    sweeps = {"lab1_gap_16": [], "lab1_gap_256": [], "lab1_groupnorm_lr": [], "lab1_groupnorm": [],
              "lab1_batch_size": [], "lab1_equal_examples": []}
    histories = {"lab1_gap_16": [], "lab1_gap_256": []}
    ids = {}
    for role, (b, ghost, grid) in GAP_GRID.items():
        sweep = "lab1_gap_16" if b == 16 else "lab1_gap_256"
        for lr, val in grid.items():
            for s in GAP_SEEDS:
                run = f"{role}{lr:g}s{s}"
                ids[role, lr, s] = run
                best = lr == BEST[role]
                sweeps[sweep].append({
                    "run_id": run, **common, "seed": s, "lr": lr, "global_batch_size": b, "precise_bn": True,
                    "sharpness_samples": 64, "update": 234 if b == 16 else 12, "examples": 3744 if b == 16 else 3072,
                    "val/acc_final": val + 0.002 * s, "test/acc": GAP_TEST[role][s] if best else 0.5,
                    "sharpness/top_eig": GAP_SHARP[role][s] if best else 1.0,
                    **({"ghost_batch_size": ghost} if b == 256 else {})})
                histories[sweep] += [{"run_id": run, "epoch": e, "val/loss": 1 / e, "val/acc": val - 0.01 * (3 - e)}
                                     for e in (1, 2, 3)]
    line = []
    for s in GAP_SEEDS:  # the ends within noise of each other, a bump between them
        for alpha, loss in ((-0.5, 3.0), (0, 0.1), (0.5, 0.4 + 0.01 * s), (1, 0.1 + LINE_END[s]), (1.5, 4.0)):
            end = {0: GAP_GRID["small"][2][BEST["small"]], 1: GAP_GRID["plain"][2][BEST["plain"]]}
            line.append({"run_a": ids["small", BEST["small"], s], "run_b": ids["plain", BEST["plain"], s],
                         "alpha": alpha, "train/loss": loss, "train/acc": 0.9, "val/loss": loss, "val/acc":
                         end.get(alpha, 0.5), "test/loss": loss, "test/acc": 0.9})
    for (b, lr), val in GN_VAL.items():
        sweep, seeds_ = ("lab1_groupnorm", range(5)) if lr == 0.002 else ("lab1_groupnorm_lr", range(3))
        for s in seeds_:
            sweeps[sweep].append({"run_id": f"gn{b}-{lr:g}s{s}", **common, "seed": s, "lr": lr,
                                  "global_batch_size": b, "model_kwargs": "norm_layer=groupnorm1",
                                  "val/acc_final": val + (0.3 if s >= 3 else 0.01 * s),  # seeds 3-4: not tuned on
                                  "test/acc": val - 0.01 * s})
    sweeps["lab1_groupnorm"].append({"run_id": "gn64", **common, "seed": 0, "lr": 0.002, "global_batch_size": 64,
                                     "model_kwargs": "norm_layer=groupnorm1", "val/acc_final": 1.0, "test/acc": 1.0})
    for s in range(5):
        for b, update, examples, acc in ((16, 234, 3744, 0.99), (256, 12, 3072, 0.955)):
            sweeps["lab1_batch_size"].append({"run_id": f"bs{b}s{s}", **common, "seed": s, "lr": 0.002,
                                              "global_batch_size": b, "precise_bn": True, "update": update,
                                              "examples": examples, "test/acc": acc - 0.001 * s * (b == 256)})
        sweeps["lab1_equal_examples"].append({"run_id": f"ee{s}", **common, "epoch": 192 / 78, "seed": s,
                                              "lr": 0.002, "global_batch_size": 16, "precise_bn": True, "update": 192,
                                              "examples": 3072, "max_updates": 192, "test/acc": 0.97 + 0.002 * s})
    for sweep, rows in sweeps.items():
        write_rows(folder / f"{sweep}.csv", rows)
        write_rows(folder / f"{sweep}_history.csv", histories.get(sweep) or [{"run_id": rows[0]["run_id"]}])
    write_rows(folder / "gap_line.csv", line)
    return folder


@pytest.fixture(scope="module")
def gap(tmp_path_factory):
    """The Report of 1e, 1f and 1g on the synthetic results."""
    report = load_report()
    tmp = tmp_path_factory.mktemp("gap")
    rep = report.Report(gap_results(tmp / "results"), tmp / "out")
    for section in (report.section_gap, report.section_groupnorm_lr, report.section_equal_examples):
        section(rep)
    return rep


def block(rep, name):
    return " ".join(rep.blocks[name].split())


def test_the_gap_takes_each_ones_best_lr_and_pairs_its_seeds(gap):
    lr_table = block(gap, "table:gap_lr")
    assert "| best | 0.001 | 0.016 (the highest of its grid: not bracketed by it) | 0.008 |" in lr_table
    assert "| 0.0005 | 0.954 ± " in lr_table and "| not run |" in lr_table  # batch 16 never ran lr 0.016
    rows = {r[0]: r for r in csv.reader(open(gap.out / "tables" / "gap_paired.csv"))}
    for name, (a, b) in {"the gap": ("plain", "small"), "batch norm's share": ("ghost", "plain"),
                         "what ghost BN leaves": ("ghost", "small")}.items():
        (row,) = [r for key, r in rows.items() if key.endswith(name)]
        diffs = [x - y for x, y in zip(GAP_TEST[a], GAP_TEST[b], strict=True)]
        half = T_975[4] * statistics.stdev(diffs) / math.sqrt(5)
        assert row[2] == f"{statistics.mean(diffs):.3f} ± {half:.3f} (n=5)", name
    ratio = math.exp(statistics.mean(math.log(2 * 1.05 ** s) for s in GAP_SEEDS))
    assert rows["batch 256 − batch 16: the gap"][3].startswith(f"{ratio:.2f} [")
    answer = block(gap, "text:gap_answer")
    diffs = [x - y for x, y in zip(GAP_TEST["plain"], GAP_TEST["small"], strict=True)]
    assert (f"batch 256 is {-statistics.mean(diffs):.3f} ± {T_975[4] * statistics.stdev(diffs) / math.sqrt(5):.3f} "
            "below batch 16 in all 5 seeds") in answer
    assert "batch 256 with ghost BN in groups of 16 is within noise of plain batch norm at batch 256" in answer
    assert f"The sharpness of batch 256's final weights is {ratio:.2f} [" in answer and "above 1 in all 5" in answer
    assert "Batch 256's best lr is the highest of its grid, so a better lr may lie beyond it; in `val/acc_final` " \
           "lr 0.008 is 0.010 ± 0.000 below lr 0.016 in all 5 seeds" in answer
    # resolved: the gap, what ghost BN leaves, sharpness and the barrier; batch norm's share and the ends' depths not
    assert [ok for ok, _, section in gap.findings if section == "1e"] == [True, False, True, True, True, False]


def test_the_line_is_read_per_seed_and_its_barrier_decides_by_rule(gap):
    design, answer = block(gap, "text:gap_line_design"), block(gap, "text:gap_line_answer")
    assert "for 5 seeds at 5 values of α from -0.5 to 1.5" in design
    assert "the last evaluation point (the weights whose sharpness is measured) in 10 of the 10 runs" in design
    assert "validation accuracy at that point in 10 of the 10 ends" in design
    barriers = [0.4 + 0.01 * s - max(0.1, 0.1 + LINE_END[s]) for s in GAP_SEEDS]
    assert f"is {statistics.mean(barriers):.3f} ± " in answer and "above the higher of the two ends" in answer
    assert "a barrier separates the two solutions" in answer
    assert "monotonically in none of the 5 seeds" in answer
    assert "At the ends, the train loss of batch 256's model is within noise of batch 16's" in answer
    assert ("By these rules they support sharper minima and SGD's noise and the number of updates; they do not "
            "resolve batch norm's statistics over more images.") in answer
    command = gap.blocks["text:gap_line_command"]
    assert "runs/sweeps/lab1_gap_16/small0.001s0 runs/sweeps/lab1_gap_256/plain0.016s0 \\" in command
    assert "--points 5 --alpha_min -0.5 --alpha_max 1.5 --out lab1/results/gap_line.csv" in command
    alphas = [r["x"] for r in read(gap.out / "figures" / "gap.csv") if r["series"] == "line: train/loss"]
    assert len(alphas) == 5 * 5 and "-0.5" in alphas


def test_groupnorm_is_tuned_on_its_grid_seeds_and_compared_with_batch_norms_best(gap):
    table = read(gap.out / "tables" / "groupnorm_lr.csv")
    cell_002 = {k: v for k, v in next(r for r in table if r["lr"] == "0.002").items() if k != "lr"}
    assert all(v.endswith("(n=3)") for v in cell_002.values())  # lab1_groupnorm's seeds 3 and 4 left out
    assert len(cell_002) == 2  # batch 64 left out
    best = table[-1]
    assert list(best.values())[1:] == ["0.002", "0.008 (the highest of its grid: not bracketed by it)"]
    tuned = read(gap.out / "tables" / "groupnorm_tuned.csv")
    gn16 = [0.96 + 0.01 * s for s in range(3)]  # GroupNorm's best lr at batch 16: 0.002
    bn16 = [0.98 + 0.002 * s for s in range(3)]  # batch norm's: 0.001 (1e), its seeds 0-2
    diffs = [g - b for g, b in zip(gn16, bn16, strict=True)]
    assert tuned[0]["GroupNorm − batch norm (paired), val/acc_final"].startswith(f"{statistics.mean(diffs):.3f} ± ")
    assert tuned[0]["GroupNorm − batch norm (paired), val/acc_final"].endswith("(n=3)")
    answer = block(gap, "text:groupnorm_lr_answer")
    assert "At batch 16, in validation accuracy after 3 epochs, GroupNorm at lr 0.002 is within noise of batch " \
           "norm at lr 0.001" in answer
    assert "At batch 256, in validation accuracy after 3 epochs, GroupNorm at lr 0.008 is" in answer
    assert ("So, by these rules, at batch 16, a difference from batch norm is not resolved; at batch 256, GroupNorm "
            "is below batch norm at its best lr, but that lr, 0.008, is the highest of the grid, so whether a higher "
            "lr closes the gap is not measured.") in answer


def test_equal_examples_pairs_batch_16_at_the_images_of_batch_256s_epochs(gap):
    assert "commit" not in block(gap, "text:equal_examples_design")  # one commit
    report = load_report()
    assert report.commits_note({"the a runs": [{"git_commit": "1" * 40}], "the b runs": [{"git_commit": "2" * 40}]}) \
        == " The a runs come from commit `1111111` and the b runs from commit `2222222` (the provenance table)."
    assert report.commits_note({"the a runs": [{"git_commit": c * 40} for c in "12"],
                                "the b runs": [{"git_commit": "3" * 40}]}) \
        == " The a runs come from commits `1111111` and `2222222` and the b runs from commit `3333333` (the " \
           "provenance table)."
    rows = {r["comparison"]: r for r in read(gap.out / "tables" / "equal_examples.csv")}
    assert rows["equal examples"]["held equal"] == "images seen and lr"
    assert rows["equal epochs (1c)"]["held equal"] == "epochs and lr"
    assert rows["lr tuned on val (1e)"]["held equal"] == "epochs"
    assert rows["equal examples"]["batch 16: updates, images"] == "192; 3,072"
    diffs = [0.955 - 0.001 * s - (0.97 + 0.002 * s) for s in range(5)]
    assert rows["equal examples"]["test/acc, 256 − 16 (paired)"].startswith(f"{statistics.mean(diffs):.3f} ± ")
    sentence = (f"batch 256 is {-statistics.mean(diffs):.3f} ± {T_975[4] * statistics.stdev(diffs) / math.sqrt(5):.3f}"
                " below batch 16 in all 5 seeds")
    answer = block(gap, "text:equal_examples_answer")
    assert f"**equal examples** (holds equal: images seen and lr): {sentence}" in answer
    assert [(ok, s) for ok, s, section in gap.findings if section == "1g"] == [
        (True, f"At equal examples, in test accuracy, {sentence}")]


def test_without_a_line_the_readme_gives_the_command_that_makes_it(tmp_path):
    report = load_report()
    results = gap_results(tmp_path / "results")
    (results / "gap_line.csv").unlink()
    rep = report.Report(results, tmp_path / "out")
    report.section_gap(rep)
    command = rep.blocks["text:gap_line_command"]
    assert command.count("runs/sweeps/lab1_gap_16/small0.001s") == len(GAP_SEEDS)
    assert "--points 9 --alpha_min -0.5 --alpha_max 1.5 --out lab1/results/gap_line.csv" in command
    assert "No line yet" in rep.blocks["text:gap_line_design"] and "table:gap_line" in rep.blocks


# ----------------------------------------------------------------------------------------------
# Time to a result (1d) and steps in factors of 2 at several targets (4e), on data whose answer is known

def run_row(run_id, status, batch, seed, lr, target=0.97, **extra):
    return {"run_id": run_id, "status": status, "global_batch_size": batch, "seed": seed, "lr": lr,
            "target_val_acc": target, **extra}


def history_of(run_id, accs, per_eval=10, seconds=0.5):
    """Evaluation points every per_eval updates, val/acc as given, time/train_s rising by seconds each."""
    return [{"run_id": run_id, "update": per_eval * (i + 1), "examples": 8 * per_eval * (i + 1),
             "time/train_s": seconds * (i + 1), "val/acc": a} for i, a in enumerate(accs)]


def test_time_to_a_target_is_read_at_the_first_evaluation_at_or_above_it_and_a_miss_is_infinite():
    report = load_report()
    rows = [run_row("a", "reached_target", 8, 0, 0.1, 0.98), run_row("b", "finished", 8, 1, 0.1, 0.98),
            run_row("c", "reached_target", 8, 2, 0.1, 0.95), run_row("d", "diverged", 8, 3, 0.1, 0.98),
            run_row("e", "failed", 8, 4, 0.1, 0.98)]
    history = (history_of("a", [0.9, 0.96, 0.97, 0.981]) + history_of("b", [0.9, 0.96, 0.955])
               + history_of("c", [0.9, 0.951]) + history_of("d", [0.5]) + history_of("e", [0.99]))
    seconds = report.to_target(rows, history, 0.97, "time/train_s")
    # a: its third point; b ran out and d diverged below it: infinite; c stopped at 0.95 and e failed: left out
    assert seconds == {8: {0: 1.5, 1: math.inf, 3: math.inf}}
    assert report.to_target(rows, history, 0.95, "examples") == {8: {0: 160, 1: 160, 2: 160, 3: math.inf}}
    assert report.success(seconds[8].values()) == "1/3"
    assert report.fmt_median(seconds[8].values(), 2) == "∞ [1.50, ∞] (n=3)"
    assert report.fmt_median([3.0, 1.0, math.inf], 1) == "3.0 [1.0, ∞] (n=3)"  # one miss in three: still a median


def test_a_time_to_target_comparison_with_a_miss_counts_seeds_and_resolves_nothing():
    report = load_report()
    sentence, ok = report.compare_to_target("batch 1,024", "batch 8", {0: 9.0, 1: math.inf, 2: 7.0},
                                            {0: 5.0, 1: 6.0, 2: 8.0})
    assert not ok and sentence.startswith("batch 1,024 is later than batch 8 in 2 of 3 seeds")
    assert "never gets there in 1 and batch 8 in 0" in sentence
    sentence, ok = report.compare_to_target("batch 64", "batch 8", {0: 2.0, 1: 2.1, 2: 2.2}, {0: 5.0, 1: 5.2, 2: 5.1})
    assert ok and sentence.startswith("batch 64 is 3.00 ± ") and "faster than batch 8 in all 3 seeds" in sentence


def test_the_saturating_fit_recovers_lr_max_and_b_noise_and_the_power_law_its_slope():
    report = load_report()
    batches = [8, 16, 32, 64, 128, 256, 512, 1024]
    lr_max, b_noise = 0.12, 150.0
    lrs = [lr_max / (1 + b_noise / b) for b in batches]
    got_max, got_noise, rss = report.saturating(batches, lrs)
    assert got_max == pytest.approx(lr_max, rel=1e-4) and got_noise == pytest.approx(b_noise, rel=1e-4)
    assert rss == pytest.approx(0, abs=1e-12)
    c, k, rss = report.power_law(batches, [0.002 * b ** 0.7 for b in batches])
    assert c == pytest.approx(0.002) and k == pytest.approx(0.7) and rss == pytest.approx(0, abs=1e-20)
    linear = report.saturating(batches, [0.0005 * b for b in batches])  # no saturation within these batches
    assert math.isnan(linear[0]) and math.isnan(linear[1])
    # both forms have two parameters: the AIC difference is n times the log ratio of their residuals
    assert report.aic(1.0, 8) - report.aic(0.5, 8) == pytest.approx(8 * math.log(2))


def synthetic_grid(batches, lr_star, s_of, seeds=(0, 1, 2), width=0.5):
    """{batch: {lr: {seed: updates}}} with log updates a parabola in log lr around lr_star(B), S(B) at its
    vertex, on a sqrt(2)-spaced grid of 5 lrs centred on lr_star(B)."""
    return {b: {lr_star(b) * 2 ** (j / 2): {s: s_of(b) * math.exp(width * (j / 2 * math.log(2)) ** 2)
                                            for s in seeds} for j in range(-2, 3)} for b in batches}


def test_steps_at_a_target_recover_the_optimum_lr_the_critical_batch_and_favour_the_saturating_form():
    report = load_report()
    batches = [8, 16, 32, 64, 128, 256, 512, 1024]
    cells = synthetic_grid(batches, lambda b: 0.1 / (1 + 200 / b), lambda b: 6 * (1 + 100 / b))
    fit = report.analyse_target(cells)
    for b in batches:
        assert fit.per_batch[b][0] == pytest.approx(0.1 / (1 + 200 / b), rel=1e-6)
        assert fit.per_batch[b][1] == pytest.approx(6 * (1 + 100 / b))
    assert fit.critical == (pytest.approx(6, rel=1e-4), pytest.approx(100, rel=1e-4))
    assert fit.fitted == tuple(batches)
    assert fit.saturating[:2] == (pytest.approx(0.1, rel=1e-4), pytest.approx(200, rel=1e-4))
    assert fit.delta_aic > 10  # the power law's residuals are far larger on a curve that levels off


def test_a_cell_where_runs_never_reach_the_target_counts_as_its_median_with_infinity():
    report = load_report()
    batches = [8, 32, 128]
    cells = synthetic_grid(batches, lambda b: 0.01 * b, lambda b: 1000 / b)
    low = min(cells[32])
    cells[32][low] = {0: 40.0, 1: math.inf, 2: 30.0}  # one miss in three: the median is the slower finite run
    cells[8][min(cells[8])] = {0: 1.0, 1: math.inf, 2: math.inf}  # two misses: ∞, not the one fast run
    assert report.median(cells[32][low].values()) == 40.0
    assert report.median(cells[8][min(cells[8])].values()) == math.inf
    fit = report.analyse_target(cells)
    assert fit.per_batch[8][1] == pytest.approx(1000 / 8)  # the lone fast run of a cell that mostly failed is not S
    best, edge = report.fewest_updates(cells[8])
    assert best == [pytest.approx(0.08)] and not edge
    assert report.fewest_updates({0.1: {0: 5}, 0.2: {0: 9}}) == ([0.1], True)


def test_grids_in_lr_base_and_in_lr_meet_in_one_cell_and_each_run_keeps_its_updates_to_every_target():
    report = load_report()
    rows = [run_row("a", "reached_target", 128, 0, 0.14 * 128 / 256, lr_base=0.14),
            run_row("b", "finished", 128, 1, 0.07)]
    history = history_of("a", [0.85, 0.91, 0.96, 0.97]) + history_of("b", [0.92, 0.93])
    runs = report.target_runs(rows, history, (0.9, 0.95, 0.97))
    assert runs == {128: {0.07: {0: (20, 30, 40), 1: (10, math.inf, math.inf)}}}
    resampled = report.bootstrap_targets(runs, reps=3)
    assert len(resampled) == 3 and all(len(r) == 3 for r in resampled)


class FakeReport:
    """What noise_window reads of a Report: the rows and history of a sweep."""

    def __init__(self, rows, history):
        self._rows, self._history = rows, history

    def rows(self, *sweeps):
        return self._rows

    def history(self, *sweeps):
        return self._history


def test_the_noise_scale_up_to_a_target_pools_each_runs_points_until_it_gets_there():
    report = load_report()
    rows = [run_row("a", "finished", 64, 0, 0.025), run_row("b", "finished", 64, 1, 0.025)]
    history = history_of("a", [0.9, 0.97, 0.98]) + history_of("b", [0.9, 0.95, 0.96])
    noise = {"a": [(100, 1.0), (300, 1.0), (900, 0.5)], "b": [(200, 2.0), (200, 1.0), (600, 0.1)]}
    for h in history:
        h["noise/trace_sigma"], h["noise/grad_sq"] = noise[h["run_id"]][h["update"] // 10 - 1]
    value, _, until = report.noise_window(FakeReport(rows, history), 0.97)
    # a reaches 0.97 at its second point; b never does, so its whole run counts
    assert until == {"a": 20, "b": math.inf}
    assert value == pytest.approx((100 + 300 + 200 + 200 + 600) / (1 + 1 + 2 + 1 + 0.1))
    whole, _, _ = report.noise_window(FakeReport(rows, history))
    assert whole == pytest.approx((100 + 300 + 900 + 200 + 200 + 600) / (1 + 1 + 0.5 + 2 + 1 + 0.1))


def test_targets_are_those_every_runs_history_can_say():
    report = load_report()
    stops_at = [{"target_val_acc": 0.97}, {"target_val_acc": 0.98}]
    assert report.readable(stops_at, (0.9, 0.95, 0.97)) == (0.9, 0.95, 0.97)
    assert report.readable(stops_at, (0.95, 0.97, 0.98)) == (0.95, 0.97)  # a run stopped at 0.97 cannot say 0.98
    assert report.readable([{"target_val_acc": 0.05}], (0.9, 0.95, 0.97)) == (0.05,)  # its own target, no other
