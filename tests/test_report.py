"""lab1/report.py on the hand-made fixture in tests/fixtures/lab1/ (the INTERFACE.md formats), then on runs made
here, offline (--from_sweeps) and as wandb.Api returns them (--wandb, --publish).

Expected numbers are computed here straight from the fixture rows, not with report.py's helpers.
"""

import csv
import importlib.util
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from wandb.apis import public
from wandb_workspaces import expr

from conftest import BIN, ROOT, clean_env, inspect_wandb, run

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


# ----------------------------------------------------------------------------------------------
# The online path, --wandb and --publish, on runs made here: train.py runs under sweep.py, W&B offline, read back
# with W&B's own reader and turned into the objects wandb.Api returns. Nothing here reaches a W&B server.

ENTITY, PROJECT, SWEEP_ID = "lab-team", "lab1", "q7rk2x9d"  # SWEEP_ID: made up, as the W&B server would make it
SWEEPS = ["lab1_batch_size", "lab1_epochs", "lab1_lr", "lab1_lr_batch", "lab1_noise_scale"]
TINY_SWEEP = {  # question 3 in miniature: an lr that trains and one that diverges; noise scale on for its tables
    "program": str(ROOT / "train.py"), "method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
    "parameters": {"lr": {"values": [0.01, 1e6]}, "optimizer": {"value": "sgd"}, "seed": {"value": 0},
                   "model": {"value": "resnet10t"}, "img_size": {"value": 16}, "train_samples": {"value": 64},
                   "batch_size": {"value": 16}, "grad_accum_steps": {"value": 2}, "noise_scale": {"value": True},
                   "epochs": {"value": 2}}}


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
    W&B recorded, through --wandb's import; each as all five Lab 1 sweeps, so that every table is made."""
    tmp = tmp_path_factory.mktemp("online")
    (tmp / "lab1_lr.yaml").write_text(yaml.safe_dump(TINY_SWEEP, sort_keys=False))
    # Both runs at once, a thread each (CUDA_VISIBLE_DEVICES means nothing on a CPU): half the CPU time of two
    # runs whose threads spin waiting for each other's cores.
    proc = run([str(ROOT / "sweep.py"), "lab1_lr.yaml", "--sweep_dir", "sweeps/lab1_lr", "--gpus", "0,1"],
               cwd=tmp, env=clean_env(HOME=str(tmp), OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in SWEEPS[:2] + SWEEPS[3:]:  # the same runs, as each sweep
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
    for name in SWEEPS[:2] + SWEEPS[3:]:
        report.import_wandb(f"{ENTITY}/{PROJECT}/{SWEEP_ID}", tmp / "online" / "results", name, RecordedApi(sweep))
    assert report.main(["--results", str(tmp / "online" / "results"), "--out", str(tmp / "online" / "out")]) == 0
    return {"tmp": tmp, "runs": runs, "sweep": sweep, "report": report}


def test_wandb_import_makes_the_tables_and_figures_of_the_offline_path(online):
    offline, imported = online["tmp"] / "offline" / "out", online["tmp"] / "online" / "out"
    assert len(text_outputs(imported)) == 19  # README.md + 9 tables as .md and .csv: every table was made
    assert text_outputs(imported) == text_outputs(offline)
    figures = sorted(p.name for p in (imported / "figures").glob("*.png"))
    assert figures == sorted(f"{name}.png" for name in FIGURES)
    for name in figures:
        assert (imported / "figures" / name).read_bytes() == (offline / "figures" / name).read_bytes(), name


def test_wandb_import_takes_params_from_the_config_and_metrics_from_the_summary(online):
    rows = read(online["tmp"] / "online" / "results" / "lab1_lr.csv")  # named by the sweep's name in W&B
    by_id = {r.id: r for r in online["runs"]}
    assert sorted(float(r["lr"]) for r in rows) == [0.01, 1e6]
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
    for panel in (p for g in grids for p in g.panels):
        used = panel_keys(panel)
        assert used[0] or used[1] or used[2]
        assert set(used[0]) <= config and set(used[1]) <= summary and set(used[2]) <= history, used


def test_report_text_follows_the_readme():
    """Every heading, line of prose and table of lab1/README.md is in the Report, each figure a panel grid, and a
    section added to the README is added to the Report."""
    report = load_report()
    readme = (ROOT / "lab1" / "README.md").read_text() + (
        "\n## 5. A new question\n\nShort answer: it depends.\n\n<!-- table:lr -->\n| lr | n |\n|---|---|\n"
        "| 0.1 | 3/3 |\n<!-- /table:lr -->\n\n![the same figure](figures/lr.png)\n")
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
                          env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "wandb login" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 40  # wandb-core's retries end before wandb.Api's timeout; no hang at exit
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("args", [["--wandb", "lab1/q7rk2x9d"], ["--publish", "lab-team"],
                                  ["--wandb", "a/b/c", "--wandb", "a/b/d", "--sweep_name", "lab1_lr"]])
def test_bad_wandb_arguments_are_one_line_before_anything_runs(tmp_path, capsys, args):
    assert load_report().main([*args, "--results", str(tmp_path / "results"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("report.py: error: --")
    assert not (tmp_path / "results").exists()
