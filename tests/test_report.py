"""lab1/report.py on the hand-made fixture in tests/fixtures/lab1/ (the INTERFACE.md formats).

Expected numbers are computed here straight from the fixture rows, not with report.py's helpers.
"""

import csv
import importlib.util
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "lab1" / "report.py"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lab1"
QUESTIONS = {"batch_size": ("lab1_batch_size", ["batch_size"]), "epochs": ("lab1_epochs", ["epochs"]),
             "lr": ("lab1_lr", ["lr"]), "lr_batch": ("lab1_lr_batch", ["batch_size", "lr"])}
METRICS = ["time/train_s", "test/acc", "test/loss", "memory/peak_mb", "throughput/train_img_s"]
FIGURES = ["batch_size", "epochs", "lr", "val_curves", "lr_batch", "best_lr", "noise_scale"]


def load_report():
    spec = importlib.util.spec_from_file_location("report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_report(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], check=False, capture_output=True,
                          text=True, timeout=120)


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def key(row, params):
    return tuple(float(row[p]) for p in params)


def finished_values(rows, params, value, metric):
    return [float(r[metric]) for r in rows
            if r["status"] == "finished" and key(r, params) == value and r[metric] not in ("", "nan")]


def text_outputs(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.suffix in (".md", ".csv")}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """report.py run once on a copy of the fixture, with a copy of the README skeleton."""
    tmp = tmp_path_factory.mktemp("report")
    shutil.copytree(FIXTURE, tmp / "results")
    (tmp / "out").mkdir()
    shutil.copyfile(ROOT / "lab1" / "README.md", tmp / "out" / "README.md")
    proc = run_report("--results", tmp / "results", "--out", tmp / "out")
    assert proc.returncode == 0, proc.stderr
    return tmp / "out"


@pytest.mark.parametrize("name", QUESTIONS)
def test_table_is_mean_and_std_over_seeds_of_finished_runs(out, name):
    sweep, params = QUESTIONS[name]
    rows = read(FIXTURE / f"{sweep}.csv")
    table = read(out / "tables" / f"{name}.csv")
    assert [key(t, params) for t in table] == sorted({key(r, params) for r in rows})
    for t in table:
        group = [r for r in rows if key(r, params) == key(t, params)]
        assert int(t["runs"]) == len(group)
        for status in ("finished", "diverged", "oom", "failed"):
            assert int(t[status]) == sum(r["status"] == status for r in group)
        if t["finished"] == "0":
            continue
        for metric in METRICS:
            values = finished_values(rows, params, key(t, params), metric)
            assert float(t[f"{metric} mean"]) == pytest.approx(statistics.mean(values), rel=1e-5)
            if len(values) > 1:
                assert float(t[f"{metric} std"]) == pytest.approx(statistics.stdev(values), rel=1e-5, abs=1e-9)


def test_diverged_and_oom_runs_are_counted_never_numbers(out):
    lr = {float(t["lr"]): t for t in read(out / "tables" / "lr.csv")}
    assert lr[1.0]["diverged"] == "2" and lr[1.0]["finished"] == "0"
    assert all(lr[1.0][f"{m} {s}"] == "diverged" for m in METRICS for s in ("mean", "std"))
    assert lr[0.1]["diverged"] == "1"  # the mixed group averages its one finished run
    assert float(lr[0.1]["test/acc mean"]) == finished_values(read(FIXTURE / "lab1_lr.csv"), ["lr"], (0.1,),
                                                              "test/acc")[0]
    md_row = next(line for line in (out / "tables" / "lr.md").read_text().splitlines() if line.startswith("| 1 |"))
    cells = [c.strip() for c in md_row.strip("|").split("|")]
    assert cells[2:-1] == ["diverged"] * (len(cells) - 3) and cells[-1] == "2 diverged"
    assert "1 oom" in (out / "tables" / "batch_size.md").read_text()
    assert "1 failed" in (out / "tables" / "lr.md").read_text()
    assert "nan" not in "".join((out / "tables" / f"{n}.md").read_text() for n in QUESTIONS).lower()


def test_early_stopping_epoch_is_the_lowest_val_loss(out):
    history = read(FIXTURE / "lab1_epochs_history.csv")
    runs = [r["run_id"] for r in read(FIXTURE / "lab1_epochs.csv") if r["epochs"] == "6"]
    best = [min((float(h["val/loss"]), int(h["epoch"])) for h in history if h["run_id"] == run)[1] for run in runs]
    table = {t["epochs"]: t for t in read(out / "tables" / "early_stopping.csv")}
    assert float(table["6"]["best_epoch/val_loss mean"]) == pytest.approx(statistics.mean(best))
    assert float(table["6"]["best_epoch/val_loss mean"]) < 6  # the fixture over-fits after epoch 4


def test_best_lr_per_batch_size_and_log_log_fit(out):
    rows = [r for r in read(FIXTURE / "lab1_lr_batch.csv") if r["status"] == "finished"]
    best = {}
    for r in rows:
        bs = float(r["batch_size"])
        if bs not in best or float(r["val/acc"]) > best[bs][0]:
            best[bs] = (float(r["val/acc"]), float(r["lr"]))
    table = read(out / "tables" / "best_lr.csv")
    assert [(float(t["batch_size"]), float(t["lr"])) for t in table] == [(bs, best[bs][1]) for bs in sorted(best)]
    xs = [math.log10(bs) for bs in best]
    ys = [math.log10(best[bs][1]) for bs in best]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    fits = {t["rule"]: t for t in read(out / "tables" / "lr_scaling.csv")}
    assert float(fits["least-squares fit"]["slope"]) == pytest.approx(slope, abs=1e-3)
    assert {float(t["slope"]) for t in fits.values()} >= {1.0, 0.5}


def test_noise_scale_over_whole_runs_is_the_mean_of_the_runs(out):
    rows = read(FIXTURE / "lab1_noise_scale.csv")
    (table,) = read(out / "tables" / "noise_scale_run.csv")
    values = [float(r["noise/b_simple"]) for r in rows if r["status"] == "finished"]
    assert float(table["noise/b_simple mean"]) == pytest.approx(statistics.mean(values))
    assert (table["batch_size"], table["grad_accum_steps"]) == (rows[0]["batch_size"], rows[0]["grad_accum_steps"])


def test_figures_are_written(out):
    for name in FIGURES:
        png = (out / "figures" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000, name


def test_readme_blocks_are_filled_and_prose_kept(out):
    skeleton = (ROOT / "lab1" / "README.md").read_text()
    readme = (out / "README.md").read_text()
    assert (out / "tables" / "lr.md").read_text() in readme
    assert "_No results yet" not in readme

    def prose(text):
        return [line for line in text.splitlines() if not line.startswith("|")]

    assert prose(readme) == prose(skeleton)


def test_regenerating_gives_byte_identical_text(out, tmp_path):
    before = text_outputs(out)
    assert len(before) == 19  # README.md + 9 tables as .md and .csv
    proc = run_report("--results", FIXTURE, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert text_outputs(out) == before


def test_from_sweeps_imports_results_and_histories(tmp_path):
    sweep = tmp_path / "sweeps" / "lab1_lr"
    sweep.mkdir(parents=True)
    shutil.copyfile(FIXTURE / "lab1_lr.csv", sweep / "results.csv")
    history = read(FIXTURE / "lab1_lr_history.csv")
    for run_id in sorted({h["run_id"] for h in history}):
        (sweep / run_id).mkdir()
        with open(sweep / run_id / "history.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, list(history[0])[1:], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(h for h in history if h["run_id"] == run_id)
    (tmp_path / "out").mkdir()
    shutil.copyfile(ROOT / "lab1" / "README.md", tmp_path / "out" / "README.md")
    proc = run_report("--from_sweeps", tmp_path / "sweeps", "--results", tmp_path / "results",
                      "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "results" / "lab1_lr.csv").read_bytes() == (FIXTURE / "lab1_lr.csv").read_bytes()
    imported = read(tmp_path / "results" / "lab1_lr_history.csv")

    def numbers(rows):  # str(float): "1" and "1.0" are one number, and NaN equals NaN
        return [{k: v if k == "run_id" else str(float(v)) for k, v in row.items()} for row in rows]

    assert numbers(imported) == numbers(history)
    header = (tmp_path / "results" / "lab1_lr_history.csv").read_text().splitlines()[0].split(",")
    assert header == list(history[0])  # each column once, run_id first
    assert (tmp_path / "out" / "tables" / "lr.md").exists()
    assert "_No results yet for `batch_size`._" in (tmp_path / "out" / "README.md").read_text()


def test_missing_results_is_a_one_line_error(tmp_path):
    proc = run_report("--results", tmp_path / "nowhere", "--out", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--from_sweeps" in proc.stderr


def test_wandb_runs_convert_to_the_results_csv_shape(tmp_path):
    report = load_report()
    runs = [  # shaped like {id: run.id, state: run.state, config: run.config, summary: run.summary_metrics}
        {"id": "b", "state": "finished", "config": {"lr": 0.1, "seed": 1},
         "summary": {"status": "diverged", "test/acc": float("nan"), "_step": 3, "wandb_run_dir": "x"}},
        {"id": "a", "state": "finished", "config": {"lr": 0.1, "seed": 0},
         "summary": {"status": "finished", "test/acc": 0.9, "time/train_s": 12.5, "hist": {"bins": []}}},
        {"id": "c", "state": "crashed", "config": {"lr": 0.01, "seed": 0}, "summary": {}},
    ]
    head, rows = report.wandb_rows(runs, ["lr", "seed"])
    assert head == ["run_id", "status", "exit_code", "lr", "seed", "test/acc", "time/train_s"]
    assert rows == [["a", "finished", "", "0.1", "0", "0.9", "12.5"], ["b", "diverged", "", "0.1", "1", "nan", ""],
                    ["c", "failed", "", "0.01", "0", "", ""]]
    with open(tmp_path / "lab1_lr.csv", "w", newline="") as f:
        csv.writer(f).writerows([head] + rows)
    records = report.aggregate(report.read_csv(tmp_path / "lab1_lr.csv"), ["lr"], ["test/acc"])
    assert [(r["key"], dict(r["counts"]), r["stats"]["test/acc"][0]) for r in records] == [
        ((0.01,), {"failed": 1}, None), ((0.1,), {"finished": 1, "diverged": 1}, 0.9)]
    history = report.wandb_history([{"_step": 0, "epoch": 1, "val/acc": 0.5}, {"_step": 1, "system/gpu": 3}])
    assert history == [{"epoch": "1", "val/acc": "0.5"}]


def test_wandb_report_has_a_section_per_question():
    report = load_report().build_report("an-entity", "lab1")
    blocks = report.blocks
    headings = [b.text for b in blocks if type(b).__name__ == "H1"]
    assert len(headings) == 4
    for heading, word in zip(headings, ["batch size", "epochs", "learning rate", "batch size"], strict=True):
        assert word in heading.lower()
    grids = [b for b in blocks if type(b).__name__ == "PanelGrid"]
    assert [g.runsets[0].filters for g in grids] == [
        f"Group = '{s}'" for s in ("lab1_batch_size", "lab1_epochs", "lab1_lr", "lab1_lr_batch")]
    kinds = {type(p).__name__ for g in grids for p in g.panels}
    assert kinds == {"BarPlot", "LinePlot", "ScatterPlot", "ParallelCoordinatesPlot"}
