"""Lab 1 report: tables and figures regenerated from the raw sweep results in lab1/results/.

    python lab1/report.py                                 # regenerate tables/, figures/, README.md tables
    python lab1/report.py --from_sweeps runs/sweeps       # import sweep.py's folders, then regenerate
    python lab1/report.py --wandb ENTITY/PROJECT/SWEEP_ID # import W&B sweeps (network; repeatable), then regenerate
    python lab1/report.py --publish ENTITY/PROJECT        # also save README.md as a W&B Report (network)

Inputs (formats in INTERFACE.md): results/<sweep>.csv, one row per run, and results/<sweep>_history.csv,
one row per run and evaluation point. Outputs: tables/<name>.md and .csv, figures/<name>.png, and the blocks
between `<!-- table:NAME -->` and `<!-- /table:NAME -->` in README.md. Text outputs are deterministic: sorted
rows, fixed float formats, no timestamps. Tables aggregate completed runs only (runfiles.COMPLETED: mean ±
sample std over seeds); other runs are counted by status, and a group with none completed shows its status.
"""

import argparse
import csv
import math
import re
import shutil
import statistics
import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import runfiles  # the file contract between train.py, sweep.py and this report

PARAMS = ("batch_size", "epochs", "lr", "seed")  # swept parameters of the lab1 sweeps
SELECT = "val/acc"  # the best lr is chosen on validation accuracy, never on test
BASE = ["time/train_s", "test/acc", "test/loss", "memory/peak_mb", "throughput/train_img_s"]
UNITS = {"time/train_s": "s", "memory/peak_mb": "MB", "throughput/train_img_s": "img/s", "time/to_best_s": "s"}
DECIMALS = {"time/train_s": 1, "memory/peak_mb": 0, "throughput/train_img_s": 0, "time/to_best_s": 1,
            "best_epoch/val_loss": 1, "best_epoch/val_acc": 1, "noise/b_simple": 1}  # others: 4
# table name -> (sweep, group-by parameters, metric columns)
QUESTIONS = {
    "batch_size": ("lab1_batch_size", ["batch_size"], BASE + ["train/acc", "train/loss", "val/acc"]),
    "epochs": ("lab1_epochs", ["epochs"], BASE + ["train/acc", "val/acc"]),
    "lr": ("lab1_lr", ["lr"], BASE + ["train/loss", "val/acc"]),
    "lr_batch": ("lab1_lr_batch", ["batch_size", "lr"], BASE + ["train/acc", "train/loss", "val/acc"]),
}
EARLY_STOP = ["best_epoch/val_loss", "best_epoch/val_acc", "val/acc@best_val_loss", "val/acc@last",
              "time/to_best_s", "time/train_s"]


class ReportError(Exception):
    """A user mistake (missing input, bad argument): one line on stderr, exit code 2."""


# ---------------------------------------------------------------- reading and aggregating

def parse(value):
    """CSV cell -> None (empty), float ("nan" included) or the string itself."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value


def read_csv(path):
    with open(path, newline="") as f:
        rows = [{k: v if k in ("run_id", "status") else parse(v) for k, v in row.items()}
                for row in csv.DictReader(f)]
    for row in rows:
        row["status"] = row.get("status") or "failed"
    return rows


def load_results(results_dir):
    """sweep name -> (result rows, history rows)."""
    loaded = {}
    for path in sorted(Path(results_dir).glob("*.csv")):
        if path.stem.endswith("_history"):
            continue
        rows = read_csv(path)
        history_path = path.with_name(f"{path.stem}_history.csv")
        history = read_csv(history_path) if history_path.exists() else []
        runs = {row["run_id"]: row for row in rows}
        for h in history:  # each epoch row gets its run's status and swept parameters
            run = runs.get(h["run_id"], {"status": "failed"})
            h.update({k: run.get(k) for k in ("status", *PARAMS)})
        loaded[path.stem] = (rows, history)
    return loaded


def is_number(value):
    return isinstance(value, float) and math.isfinite(value)


def sort_key(key):
    return tuple((0, v, "") if isinstance(v, float) else (1, 0, str(v)) for v in key)


def group_rows(rows, by):
    groups = {}
    for row in sorted(rows, key=lambda r: (r["run_id"], r.get("epoch") or 0)):
        groups.setdefault(tuple(row.get(k) for k in by), []).append(row)
    return dict(sorted(groups.items(), key=lambda item: sort_key(item[0])))


def aggregate(rows, by, metrics):
    """One record per group: key, status counts and (mean, std, n) of each metric over completed runs."""
    records = []
    for key, runs in group_rows(rows, by).items():
        completed = [r for r in runs if r["status"] in runfiles.COMPLETED]
        stats = {}
        for metric in metrics:
            values = [r[metric] for r in completed if is_number(r.get(metric))]
            mean = statistics.fmean(values) if values else None
            std = statistics.stdev(values) if len(values) > 1 else None
            stats[metric] = (mean, std, len(values))
        records.append({"key": key, "counts": Counter(r["status"] for r in runs), "stats": stats})
    return records


def n_completed(counts):
    return sum(counts[s] for s in runfiles.COMPLETED)


def not_finished(counts):
    return ", ".join(f"{counts[s]} {s}" for s in sorted(counts) if s not in runfiles.COMPLETED)


# ---------------------------------------------------------------- tables

def fmt_key(value):
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"
    return "" if value is None else str(value)


def md_cell(record, metric):
    if not n_completed(record["counts"]):
        return "/".join(sorted(record["counts"]))  # e.g. "diverged": never a number
    mean, std, _ = record["stats"][metric]
    if mean is None:
        return "n/a"
    d = DECIMALS.get(metric, 4)
    return f"{mean:.{d}f}" if std is None else f"{mean:.{d}f} ± {std:.{d}f}"


def csv_cells(record, metric):
    if not n_completed(record["counts"]):
        word = "/".join(sorted(record["counts"]))
        return [word, word]
    mean, std, _ = record["stats"][metric]
    return ["" if v is None else f"{v:.6g}" for v in (mean, std)]


def header(metric):
    return f"{metric} ({UNITS[metric]})" if metric in UNITS else metric


def render(records, by, metrics):
    """-> (csv table, markdown table), each as (header, rows of strings)."""
    csv_head = by + ["runs", *runfiles.STATUSES] + [f"{m} {s}" for m in metrics for s in ("mean", "std")]
    md_head = by + ["n"] + [header(m) for m in metrics] + ["not finished"]
    csv_rows, md_rows = [], []
    for r in records:
        keys = [fmt_key(v) for v in r["key"]]
        total = sum(r["counts"].values())
        csv_rows.append(keys + [str(total)] + [str(r["counts"][s]) for s in runfiles.STATUSES]
                        + [c for m in metrics for c in csv_cells(r, m)])
        md_rows.append(keys + [f"{n_completed(r['counts'])}/{total}"] + [md_cell(r, m) for m in metrics]
                       + [not_finished(r["counts"])])
    return (csv_head, csv_rows), (md_head, md_rows)


def markdown(table):
    head, rows = table
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def write_table(out_dir, name, tables):
    (head, rows), md_table = tables
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    with open(out_dir / "tables" / f"{name}.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([head] + rows)
    (out_dir / "tables" / f"{name}.md").write_text(markdown(md_table))
    return markdown(md_table)


def update_readme(path, blocks):
    """Rewrite each <!-- table:NAME --> block of README.md; the prose around it is left alone."""
    text = path.read_text()
    for name in re.findall(r"<!-- table:([\w-]+) -->", text):
        body = blocks.get(name, f"_No results yet for `{name}`._\n")
        pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(<!-- /table:{name} -->)", re.DOTALL)
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), text)
    path.write_text(text)


# ---------------------------------------------------------------- derived results

def early_stop_rows(rows, history):
    """Per run of the epochs sweep: where early stopping on val/loss (or on val/acc) would have stopped."""
    curves = group_rows(history, ["run_id"])
    derived = []
    for run in rows:
        out = {"run_id": run["run_id"], "status": run["status"], "epochs": run.get("epochs"),
               "time/train_s": run.get("time/train_s")}
        curve = [h for h in curves.get((run["run_id"],), []) if is_number(h.get("val/loss"))]
        if curve:
            best = min(curve, key=lambda h: h["val/loss"])  # ties: the earliest epoch
            out["best_epoch/val_loss"] = best["epoch"]
            out["best_epoch/val_acc"] = max(curve, key=lambda h: h["val/acc"])["epoch"]
            out["val/acc@best_val_loss"] = best["val/acc"]
            out["val/acc@last"] = curve[-1]["val/acc"]
            if "time/train_s" in best:  # training seconds so far, at each evaluation point (INTERFACE.md)
                out["time/to_best_s"] = best["time/train_s"]
            else:  # histories of train.py before evaluation points: seconds per epoch
                out["time/to_best_s"] = math.fsum(h["time/epoch_s"] for h in curve if h["epoch"] <= best["epoch"])
        derived.append(out)
    return derived


def best_lr(records):
    """lr x batch records -> per batch size, the record of the lr with the highest mean val/acc."""
    best = {}
    for r in records:
        score = r["stats"][SELECT][0]
        if score is not None and (r["key"][0] not in best or score > best[r["key"][0]]["stats"][SELECT][0]):
            best[r["key"][0]] = r
    return [best[k] for k in sorted(best)]


def fit_lr_scaling(best):
    """log10(lr*) = slope * log10(batch_size) + intercept: least-squares slope, then slope 1 and 0.5 fixed."""
    xs = [math.log10(r["key"][0]) for r in best]
    ys = [math.log10(r["key"][1]) for r in best]
    if len(set(xs)) < 2:
        return []
    fitted = statistics.linear_regression(xs, ys).slope
    fits = []
    for rule, slope in (("least-squares fit", fitted), ("linear scaling (Goyal et al. 2017)", 1.0),
                        ("square-root scaling", 0.5)):
        intercept = statistics.fmean(y - slope * x for x, y in zip(xs, ys, strict=True))
        rms = math.sqrt(statistics.fmean((y - slope * x - intercept) ** 2 for x, y in zip(xs, ys, strict=True)))
        fits.append((rule, slope, intercept, rms))
    return fits


def fit_table(fits):
    head = ["rule", "slope", "intercept (log10 lr)", "rms residual (decades)"]
    rows = [[rule, f"{s:.3f}", f"{b:.3f}", f"{rms:.3f}"] for rule, s, b, rms in fits]
    return (head, rows), (head, rows)


# ---------------------------------------------------------------- figures

def save(fig, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: same data, same bytes
    plt.close(fig)


def set_xscale(ax, param, xs):
    """lr on a log10 axis; batch sizes on a log2 axis; every other parameter linear, ticks at its values."""
    if param == "lr":
        ax.set_xscale("log")
        return
    if param == "batch_size":
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [fmt_key(x) for x in xs])


def mark_not_finished(ax, x, counts):
    """A red x on the axis floor, labelled with how many runs of the group did not finish."""
    if not_finished(counts):
        ax.plot([x], [0.03], "rx", transform=ax.get_xaxis_transform(), clip_on=False)
        ax.annotate(not_finished(counts), (x, 0.06), xycoords=ax.get_xaxis_transform(), fontsize=7,
                    color="red", ha="center")


def plot_metric(ax, records, metric, label=None, index=0):
    points = [(r["key"][index], *r["stats"][metric][:2]) for r in records if r["stats"][metric][0] is not None]
    if points:
        xs, means, stds = zip(*points, strict=True)
        ax.errorbar(xs, means, yerr=[s or 0.0 for s in stds], marker="o", capsize=3, label=label)
    for r in records:
        mark_not_finished(ax, r["key"][index], r["counts"])
    ax.margins(y=0.15)  # room for the not-finished marks on the floor


def fig_by_param(records, param, metrics, path):
    rows, cols = math.ceil(len(metrics) / 4), min(len(metrics), 4)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_axis_off()
    for ax, metric in zip(axes.flat, metrics, strict=False):
        plot_metric(ax, records, metric)
        set_xscale(ax, param, sorted({r["key"][0] for r in records}))
        ax.set(xlabel=param, ylabel=header(metric), title=metric)
    fig.suptitle(f"by {param}: mean ± std over seeds of the completed runs")
    save(fig, path)


def mean_curve(history, metric):
    by_epoch = group_rows([h for h in history if is_number(h.get(metric))], ["epoch"])
    return [(e, statistics.fmean(h[metric] for h in hs)) for (e,), hs in by_epoch.items()]


def fig_val_curves(history, path):
    """Per-epoch curves of the epochs sweep (mean over seeds); markers where early stopping would stop."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    completed = [h for h in history if h["status"] in runfiles.COMPLETED]
    for (epochs,), hs in group_rows(completed, ["epochs"]).items():
        val_loss, val_acc = mean_curve(hs, "val/loss"), mean_curve(hs, "val/acc")
        if not val_loss:
            continue
        line, = ax_loss.plot(*zip(*val_loss, strict=True), marker=".", label=f"epochs={fmt_key(epochs)} val")
        if mean_curve(hs, "train/loss"):
            ax_loss.plot(*zip(*mean_curve(hs, "train/loss"), strict=True), "--", color=line.get_color(),
                         label=f"epochs={fmt_key(epochs)} train")
        ax_loss.plot(*min(val_loss, key=lambda p: p[1]), "v", color=line.get_color(), markersize=10)
        ax_acc.plot(*zip(*val_acc, strict=True), marker=".", color=line.get_color(), label=f"epochs={fmt_key(epochs)}")
        ax_acc.plot(*max(val_acc, key=lambda p: p[1]), "*", color=line.get_color(), markersize=12)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss (v: min val/loss = early stop)")
    ax_acc.set(xlabel="epoch", ylabel="val/acc", title="val/acc (*: peak)")
    ax_loss.legend(fontsize=7)
    ax_acc.legend(fontsize=7)
    save(fig, path)


def fig_lr_batch(records, best, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    for batch_size in sorted({r["key"][0] for r in records}):
        recs = [r for r in records if r["key"][0] == batch_size]
        plot_metric(ax, recs, SELECT, label=f"batch_size={fmt_key(batch_size)}", index=1)
    for r in best:
        ax.plot(r["key"][1], r["stats"][SELECT][0], "k*", markersize=12)
    ax.set_xscale("log")
    ax.set(xlabel="lr", ylabel=SELECT, title=f"{SELECT} by lr and batch size (*: best lr)")
    ax.legend(fontsize=7)
    save(fig, path)


def fig_best_lr(best, fits, b_simple, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["key"][0] for r in best]
    ax.plot(xs, [r["key"][1] for r in best], "ko", label="best lr (grid)")
    span = [min(xs) / 1.5, max(xs) * 1.5]
    for rule, slope, intercept, _ in fits:
        ax.plot(span, [10 ** (intercept + slope * math.log10(x)) for x in span], label=f"{rule}: slope {slope:.2f}")
    if b_simple:
        ax.axvline(b_simple, color="gray", ls=":", label=f"B_simple ≈ {b_simple:.0f} (McCandlish et al. 2018)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="batch_size", ylabel="best lr", title="best lr vs batch size (log-log)")
    ax.legend(fontsize=7)
    save(fig, path)


# ---------------------------------------------------------------- the report

def report_questions(loaded, out_dir):
    """The four questions' tables and figures; -> (markdown blocks, records by table name)."""
    blocks, records = {}, {}
    for name, (sweep, by, metrics) in QUESTIONS.items():
        if sweep not in loaded:
            print(f"report: no {sweep}.csv, skipping table {name}")
            continue
        records[name] = aggregate(loaded[sweep][0], by, metrics)
        blocks[name] = write_table(out_dir, name, render(records[name], by, metrics))
        if len(by) == 1:
            fig_by_param(records[name], by[0], metrics, out_dir / "figures" / f"{name}.png")
    return blocks, records


def report_early_stopping(rows, history, out_dir):
    records = aggregate(early_stop_rows(rows, history), ["epochs"], EARLY_STOP)
    fig_val_curves(history, out_dir / "figures" / "val_curves.png")
    return {"early_stopping": write_table(out_dir, "early_stopping", render(records, ["epochs"], EARLY_STOP))}


def report_noise_scale(rows, history, out_dir):
    """B_simple per epoch and over whole runs; -> (markdown blocks, mean whole-run B_simple)."""
    per_epoch = ["noise/trace_sigma", "noise/grad_sq", "noise/b_simple"]
    records = aggregate(history, ["epoch"], per_epoch)
    fig_by_param(records, "epoch", per_epoch, out_dir / "figures" / "noise_scale.png")
    by = ["batch_size", "grad_accum_steps"]  # B_small, and B_big / B_small
    runs = aggregate(rows, by, ["noise/b_simple", "val/acc"])
    blocks = {"noise_scale": write_table(out_dir, "noise_scale", render(records, ["epoch"], per_epoch)),
              "noise_scale_run": write_table(out_dir, "noise_scale_run",
                                             render(runs, by, ["noise/b_simple", "val/acc"]))}
    return blocks, runs[0]["stats"]["noise/b_simple"][0] if runs else None


def report_best_lr(records, b_simple, out_dir):
    best = best_lr(records)
    fits = fit_lr_scaling(best)
    fig_lr_batch(records, best, out_dir / "figures" / "lr_batch.png")
    if best:  # else every lr of every batch size diverged
        fig_best_lr(best, fits, b_simple, out_dir / "figures" / "best_lr.png")
    metrics = [SELECT, "test/acc", "test/loss", "time/train_s"]
    return {"best_lr": write_table(out_dir, "best_lr", render(best, ["batch_size", "lr"], metrics)),
            "lr_scaling": write_table(out_dir, "lr_scaling", fit_table(fits))}


def regenerate(results_dir, out_dir):
    """Write every table and figure the results allow; rewrite README.md's table blocks. -> table names."""
    loaded = load_results(results_dir)
    blocks, records = report_questions(loaded, out_dir)
    epochs_rows, epochs_history = loaded.get("lab1_epochs", ([], []))
    if epochs_history:
        blocks.update(report_early_stopping(epochs_rows, epochs_history, out_dir))
    b_simple = None
    if loaded.get("lab1_noise_scale", ([], []))[1]:
        noise_blocks, b_simple = report_noise_scale(*loaded["lab1_noise_scale"], out_dir)
        blocks.update(noise_blocks)
    if "lr_batch" in records:
        blocks.update(report_best_lr(records["lr_batch"], b_simple, out_dir))
    if (out_dir / "README.md").exists():
        update_readme(out_dir / "README.md", blocks)
    return sorted(blocks)


# ---------------------------------------------------------------- importing results

def write_history(path, runs):
    """runs: [(run_id, [history row dicts])] -> one CSV with a leading run_id column (union of columns)."""
    columns = ["run_id"]
    for _, rows in runs:
        for row in rows:
            columns += [c for c in row if c not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows({"run_id": run_id, **row} for run_id, rows in runs for row in rows)


def import_sweeps(sweeps_dir, results_dir):
    """Copy each sweep.py folder's results.csv to <sweep>.csv and gather its runs' history.csv files."""
    found = sorted(Path(sweeps_dir).glob("*/results.csv"))
    if not found:
        raise ReportError(f"no */results.csv under {sweeps_dir}: run sweep.py first, or pass its output folder")
    results_dir.mkdir(parents=True, exist_ok=True)
    for results in found:
        sweep = results.parent.name
        shutil.copyfile(results, results_dir / f"{sweep}.csv")
        runs = []
        for run_id in sorted(row["run_id"] for row in read_csv(results)):
            history = runfiles.read_history(results.parent / run_id / runfiles.HISTORY)
            if history:
                runs.append((run_id, history))
        write_history(results_dir / f"{sweep}_history.csv", runs)
        print(f"report: imported {sweep} ({len(runs)} histories)")


# W&B's state of an ended run -> status, for a run whose summary has no status from train.py (it died first).
# Runs still running or pending are left out, as sweep.py's results.csv has a row per ended run only.
W_AND_B_STATE = {"finished": "finished", "failed": "failed", "crashed": "failed", "killed": "stopped",
                 "preempted": "preempted"}
SUMMARY_OPS = ("min", "max", "mean", "last", "first", "best")  # define_metric(summary=...) keeps {"max": x}
SCALAR = (int, float, str, bool)


def first_line(error):
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def wandb_api():
    """wandb.Api() that gives up within seconds when W&B cannot be reached.

    wandb-core retries a failed request for minutes. When wandb.Api's own timeout (19 s) fires first, the process
    can then hang at exit for up to 10 minutes, waiting for wandb-core (wandb 0.31, seen here with no network).
    So every wandb.Api in this process gets 2 tries of at most 8 s, which end before that timeout.
    """
    import wandb

    wandb.setup(wandb.Settings(x_graphql_retry_max=1, x_graphql_retry_wait_max_seconds=1,
                               x_graphql_timeout_seconds=8))
    return wandb.Api()


def cell(value):
    """A config/summary value as sweep.py writes it: '' for missing, 'nan' for NaN."""
    return "" if value is None else str(value)


def summary_value(value):
    """A W&B summary value as one scalar: a define_metric summary {"max": x} -> x; None for media and lists."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SUMMARY_OPS:
        (value,) = value.values()
    return value if isinstance(value, SCALAR) else None


def wandb_rows(runs, params):
    """wandb.Api's Run objects -> (header, rows) shaped like sweep.py's results.csv.

    Parameters come from each run's config. Metrics come from its summary, less W&B's `_` keys and any key that
    is also a parameter: the summary's `lr` is the last value logged, never the swept one.
    """
    summaries = {r.id: {k: summary_value(v) for k, v in r.summary_metrics.items()
                        if not k.startswith("_") and k not in params and k not in ("status", "wandb_run_dir")}
                 for r in runs}
    metrics = sorted({k for summary in summaries.values() for k, v in summary.items() if v is not None})
    rows = []
    for r in sorted(runs, key=lambda r: r.id):
        # train.py's own status is the precise one: a diverged or oom run still exits 0 ("finished" in W&B)
        status = r.summary_metrics.get("status") or W_AND_B_STATE[r.state]
        rows.append([r.id, status, ""] + [cell(r.config.get(p)) for p in params]
                    + [cell(summaries[r.id].get(m)) for m in metrics])
    return ["run_id", "status", "exit_code", *params, *metrics], rows


def wandb_history(records):
    """A run's scan_history() rows -> history rows: the evaluation points (rows with `epoch`), scalars only."""
    return [{k: cell(v) for k, v in rec.items() if not k.startswith("_") and isinstance(v, SCALAR)}
            for rec in records if "epoch" in rec]


def import_wandb(path, results_dir, name=None, api=None):
    """A W&B sweep ENTITY/PROJECT/SWEEP_ID -> results/<name>.csv and <name>_history.csv, as --from_sweeps writes
    them. name: default the sweep's name in W&B. api: a wandb.Api (default: one that needs a login and network)."""
    import wandb

    try:
        api = api or wandb_api()
        sweep = api.sweep(path)
        name = name or sweep.name
        params = list(sweep.config.get("parameters", {}))
        runs = sorted(sweep.runs, key=lambda r: r.id)
        ended = [r for r in runs if r.state in W_AND_B_STATE]
        head, rows = wandb_rows(ended, params)
        histories = [(r.id, wandb_history(r.scan_history())) for r in ended]
    except (wandb.errors.Error, ValueError) as e:  # not logged in, no network, no such sweep
        raise ReportError(f"cannot read W&B sweep {path}: {first_line(e)} "
                          "(check `wandb login`, the network and the sweep id)") from e
    results_dir.mkdir(parents=True, exist_ok=True)
    with open(results_dir / f"{name}.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([head] + rows)
    write_history(results_dir / f"{name}_history.csv", histories)
    running = f", {len(runs) - len(ended)} still running left out" if len(runs) > len(ended) else ""
    print(f"report: imported W&B sweep {path} as {name} ({len(ended)} runs{running})")


# ---------------------------------------------------------------- W&B Report

def sweep_ids(sweeps):
    """wandb.Api's Sweep objects -> {sweep name: [sweep ids]}; `wandb sweep --name lab1_lr ...` names one."""
    ids = {}
    for sweep in sweeps:
        ids.setdefault(sweep.name, []).append(sweep.id)
    return ids


def runset_filter(sweep, ids):
    """The completed runs of one sweep, as in the tables: by W&B sweep id when the project has a sweep of that
    name (runs made by `wandb agent` belong to it and have no group), else by group (sweep.py's runs uploaded
    with `wandb sync` have the sweep's name as their group, and no W&B sweep)."""
    runs = f"Sweep in {ids[sweep]!r}" if ids.get(sweep) else f"Group = {sweep!r}"
    return f"{runs} and SummaryMetric('status') in {list(runfiles.COMPLETED)!r}"


def figure_panels(name):
    """-> (sweep, W&B panels of the metrics that figures/<name>.png plots), or None for a figure W&B can't show.
    Every metric is a key train.py logs: summary keys in bars, scatters and parallel plots, history keys in
    curves (step metric `epoch`); every groupby and x parameter is a config key."""
    import wandb_workspaces.reports.v2 as wr

    def bars(by, metrics):
        return [wr.BarPlot(title=f"{m} by {by}", metrics=[m], groupby=wr.Config(by), groupby_aggfunc="mean",
                           groupby_rangefunc="stddev") for m in metrics]

    def curves(by, metrics):
        return [wr.LinePlot(title=f"{m} per epoch" + (f" by {by}" if by else ""), x="epoch", y=[m],
                            groupby=wr.Config(by) if by else None, groupby_aggfunc="mean",
                            groupby_rangefunc="stddev") for m in metrics]

    def parallel(params, metrics):
        columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(p), log=p == "lr") for p in params]
        columns += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(m)) for m in metrics]
        return wr.ParallelCoordinatesPlot(title=" x ".join(params), columns=columns)

    if name in QUESTIONS and len(QUESTIONS[name][1]) == 1:  # fig_by_param: each metric by the one parameter
        sweep, (param,), metrics = QUESTIONS[name]
        return sweep, bars(param, metrics)
    return {
        "val_curves": ("lab1_epochs", curves("epochs", ["val/loss", "val/acc", "train/loss"])),
        "lr_batch": ("lab1_lr_batch", [wr.ScatterPlot(title=f"{SELECT} by lr", x=wr.Config("lr"),
                                                      y=wr.SummaryMetric(SELECT), log_x=True)]),
        "best_lr": ("lab1_lr_batch", [parallel(["batch_size", "lr"], [SELECT, "test/acc"])]),
        "noise_scale": ("lab1_noise_scale", curves(None, ["noise/trace_sigma", "noise/grad_sq", "noise/b_simple"])),
    }.get(name)


def build_report(entity, project, readme, ids):
    """lab1/README.md (tables filled) -> a W&B Report that follows it. ids: sweep_ids(). Needs no network.

    Each `## ` heading becomes an H1 and its prose and tables Markdown blocks; each figure (figures/NAME.png)
    becomes a panel grid of the same metrics over the runs of its sweep (runset_filter).
    """
    import wandb_workspaces.reports.v2 as wr

    title, blocks, text = "Lab 1", [], []

    def flush():
        if "\n".join(text).strip():
            blocks.append(wr.MarkdownBlock(text="\n".join(text).strip()))
        text.clear()

    for line in readme.splitlines():
        figure = re.fullmatch(r"!\[[^\]]*\]\(figures/([\w-]+)\.png\)", line.strip())
        panels = figure and figure_panels(figure[1])
        if line.startswith("# "):
            title = line[2:]
        elif line.startswith("## "):
            flush()
            blocks.append(wr.H1(text=line[3:]))
        elif panels:
            flush()
            sweep, grid = panels
            runset = wr.Runset(entity, project, name=sweep, filters=runset_filter(sweep, ids))
            blocks.append(wr.PanelGrid(runsets=[runset], panels=grid))
        elif not re.fullmatch(r"<!-- /?table:[\w-]+ -->", line.strip()):
            text.append(line)
    flush()
    return wr.Report(entity=entity, project=project, title=title, blocks=blocks,
                     description="lab1/README.md, with W&B panels for its figures; tables by lab1/report.py")


def publish(entity, project, readme):
    """Save README.md as a W&B Report; the project's sweeps, by name, choose each panel grid's runs."""
    if not readme.exists():
        raise ReportError(f"no {readme} to publish: pass --out a folder holding the Lab 1 README.md")

    def failed(e):
        return ReportError(f"cannot save the W&B Report to {entity}/{project}: {first_line(e)} "
                           "(check `wandb login` and the network)")

    try:
        ids = sweep_ids(wandb_api().project(project, entity).sweeps())
    except Exception as e:  # not logged in, no network, no such project
        raise failed(e) from e
    report = build_report(entity, project, readme.read_text(), ids)
    try:
        report.save()
    except Exception as e:  # wandb_workspaces raises a bare Exception when not logged in
        raise failed(e) from e
    print(f"report: published {report.url}")


# ---------------------------------------------------------------- command line

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=HERE / "results", help="raw results folder (input)")
    p.add_argument("--out", type=Path, default=HERE, help="writes tables/, figures/ and README.md blocks here")
    p.add_argument("--from_sweeps", type=Path, help="import sweep.py's output folder (e.g. runs/sweeps) first")
    p.add_argument("--wandb", action="append", default=[], metavar="ENTITY/PROJECT/SWEEP_ID",
                   help="import a W&B sweep first (repeat for several)")
    p.add_argument("--sweep_name", help="name of the one --wandb sweep in results/ (default: its name in W&B)")
    p.add_argument("--publish", metavar="ENTITY/PROJECT", help="save README.md as a W&B Report (online)")
    return p.parse_args(argv)


def check_args(args):
    """Malformed W&B paths fail here, before any network call or file written."""
    for path in args.wandb:
        if path.count("/") != 2 or "" in path.split("/"):
            raise ReportError(f"--wandb {path}: expected ENTITY/PROJECT/SWEEP_ID, as `wandb sweep` prints it")
    if args.sweep_name and len(args.wandb) != 1:
        raise ReportError("--sweep_name names one --wandb sweep: import one at a time, or name sweeps in W&B")
    if args.publish and (args.publish.count("/") != 1 or "" in args.publish.split("/")):
        raise ReportError(f"--publish {args.publish}: expected ENTITY/PROJECT")


def main(argv=None):
    args = parse_args(argv)
    try:
        check_args(args)
        if args.from_sweeps:
            import_sweeps(args.from_sweeps, args.results)
        for path in args.wandb:
            import_wandb(path, args.results, args.sweep_name)
        if not args.results.is_dir():
            raise ReportError(f"results folder {args.results} not found: pass --results or --from_sweeps")
        names = regenerate(args.results, args.out)
        print(f"report: wrote tables {', '.join(names) or '(none)'} in {args.out}")
        if args.publish:
            publish(*args.publish.split("/"), args.out / "README.md")
    except ReportError as e:
        print(f"report.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
