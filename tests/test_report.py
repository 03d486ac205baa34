"""lab1/report.py: its statistics and its wording rules on data whose answer is known, the committed report
regenerated from lab1/results/ (tables, figure data, README) with numbers recomputed here from the raw rows and no
number in the README's prose outside a generated block, then the import paths: runs made here, offline
(--from_sweeps) and as wandb.Api returns them (--wandb, --publish), labelled with their own settings.

Expected numbers are computed here straight from the rows (csv, statistics, math), not with report.py's helpers.
"""

import csv
import importlib.util
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
    commits = set()
    for path in (LAB1 / "results").glob("*.csv"):
        if path.stem.endswith("_history") or path.name == "sweep_times.csv":
            continue
        rows = read(path)
        assert rows and len({r["git_commit"] for r in rows}) == 1, path  # each sweep from one commit
        assert all(len(r["git_commit"]) == 40 and r["git_dirty"] == "False" and r["torch"] for r in rows), path
        commits.add(rows[0]["git_commit"])
    first, *others = sorted(commits)
    for other in others:  # the commits differ in sweep files and the report, never in what trains
        diff = subprocess.run(["git", "diff", "--quiet", first, other, "--", "train.py", "data.py", "runfiles.py"],
                              cwd=ROOT, capture_output=True, timeout=60)
        assert diff.returncode == 0, (first, other, diff.stderr)


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
    assert figures(imported) == figures(offline) == {"lr_sgd", "lr_adam", "noise_scale", "steps"}
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
