"""Lab 1 report: tables and figures regenerated from the raw sweep results in lab1/results/.

    python lab1/report.py                                 # regenerate tables/, figures/, README.md blocks
    python lab1/report.py --from_sweeps runs/sweeps       # import sweep.py's folders (--force: replace), regenerate
    python lab1/report.py --wandb ENTITY/PROJECT/SWEEP_ID # import W&B sweeps (network; repeatable), then regenerate
    python lab1/report.py --publish ENTITY/PROJECT        # also save README.md as a W&B Report (network)

Inputs (formats in INTERFACE.md): results/<sweep>.csv, one row per run, and results/<sweep>_history.csv, one row
per run and evaluation point. Outputs: tables/<name>.md and .csv, figures/<name>.png, and the blocks between
`<!-- table:NAME -->` and `<!-- /table:NAME -->` in README.md. Outputs are deterministic: sorted rows, fixed
formats, a seeded bootstrap, no timestamps.

Statistics: means over seeds with a 95% Student-t interval (mean ± half-width, n = the runs averaged); paired
comparisons take the per-seed differences. Fits in log lr and of S(B) get 95% percentile intervals from a
bootstrap over seeds. Only validation data choose anything (an lr, an epoch); test data are reported, never used.
"""

import argparse
import csv
import math
import re
import sys
from pathlib import Path

import matplotlib
import numpy as np
from scipy import optimize, stats

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import runfiles  # the file contract between train.py, sweep.py and this report

# Parameters a run's history rows inherit from its results row (the rest of the row is its summary).
PARAMS = ("batch_size", "seed", "lr", "lr_base", "label_noise", "early_stopping_patience", "precise_bn", "epochs",
          "warmup_epochs")
PROVENANCE = ("git_commit", "git_dirty", "torch", "timm", "accelerate", "wandb")  # from each run's config.json
BOOTSTRAP = 2000  # resamples
TRAIN_SIZE = 1259  # digits' training split (train.py's config.json: train_size), N in Smith & Le's g = lr N / B


class ReportError(Exception):
    """A user mistake (missing input, bad argument): one line on stderr, exit code 2."""


# ---------------------------------------------------------------- reading

def parse(value):
    """CSV cell -> None (empty), True/False, float ("nan" included) or the string itself."""
    if value is None or value == "":
        return None
    if value in ("True", "False"):
        return value == "True"
    try:
        return float(value)
    except ValueError:
        return value


def read_csv(path):
    with open(path, newline="") as f:
        rows = [{k: v if k in ("run_id", "status", "git_commit") else parse(v) for k, v in row.items()}
                for row in csv.DictReader(f)]
    for row in rows:
        row["status"] = row.get("status") or "failed"
    return rows


def load_results(results_dir):
    """sweep name -> (result rows, history rows); each history row carries its run's status and parameters."""
    loaded = {}
    for path in sorted(Path(results_dir).glob("*.csv")):
        if path.stem.endswith("_history"):
            continue
        rows = read_csv(path)
        history_path = path.with_name(f"{path.stem}_history.csv")
        history = read_csv(history_path) if history_path.exists() else []
        runs = {row["run_id"]: row for row in rows}
        for h in history:
            run = runs.get(h["run_id"], {"status": "failed"})
            h.update({k: run.get(k) for k in ("status", *PARAMS)})
        loaded[path.stem] = (rows, history)
    return loaded


def is_number(value):
    return isinstance(value, float) and math.isfinite(value)


def where(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def completed(rows):
    return [r for r in rows if r["status"] in runfiles.COMPLETED]


def values(rows, metric):
    return [r[metric] for r in completed(rows) if is_number(r.get(metric))]


def by_seed(rows, metric):
    return {r["seed"]: r[metric] for r in completed(rows) if is_number(r.get(metric))}


# ---------------------------------------------------------------- statistics

def mean_ci(xs):
    """-> (mean, 95% t half-width, n); half-width None for n < 2, mean None for n = 0."""
    xs = list(xs)
    if not xs:
        return None, None, 0
    mean = float(np.mean(xs))
    if len(xs) < 2:
        return mean, None, 1
    return mean, float(stats.t.ppf(0.975, len(xs) - 1) * np.std(xs, ddof=1) / math.sqrt(len(xs))), len(xs)


def paired(a, b):
    """Per-seed differences a - b over the seeds both have ({seed: value} each) -> mean_ci."""
    return mean_ci(a[s] - b[s] for s in sorted(a.keys() & b.keys()))


def fmt(value, digits=3):
    if value == math.inf:
        return "∞"
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.2e}"  # a loss of 1e9 in 4 characters


def fmt_ci(ci, digits=3, n=True):
    mean, half, count = ci
    if mean is None:
        return "n/a (n=0)"
    text = fmt(mean, digits) + ("" if half is None else f" ± {fmt(half, digits)}")
    return text + (f" (n={count})" if n else "")


def fmt_interval(estimate, low, high, digits=2):
    return f"{fmt(estimate, digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


def fmt_key(value):
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"
    return "" if value is None else str(value)


def percentile_interval(samples):
    """95% percentile interval over the resamples where the estimate exists (see share_defined)."""
    finite = [s for s in samples if s is not None and math.isfinite(s)]
    if len(finite) < 0.5 * len(samples):  # the estimate mostly does not exist: no interval
        return math.nan, math.nan
    return float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))


def share_defined(samples):
    return f"{100 * sum(s is not None and math.isfinite(s) for s in samples) / len(samples):.0f}%"


# ---------------------------------------------------------------- tables and README blocks

def markdown(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def write_table(out_dir, name, head, rows):
    """tables/<name>.csv and .md, the same cells -> the markdown (a README block)."""
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    with open(out_dir / "tables" / f"{name}.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([head] + rows)
    (out_dir / "tables" / f"{name}.md").write_text(markdown(head, rows))
    return markdown(head, rows)


def update_readme(path, blocks):
    """Rewrite each <!-- table:NAME --> block of README.md; the prose around it is left alone."""
    text = path.read_text()
    for name in re.findall(r"<!-- table:([\w-]+) -->", text):
        body = blocks.get(name, f"_No results yet for `{name}`._\n")
        pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(<!-- /table:{name} -->)", re.DOTALL)
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), text)
    path.write_text(text)


# ---------------------------------------------------------------- figures

def save(fig, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: same data, same bytes
    plt.close(fig)


def jitter(x, i, count, spread=0.06):
    """Seed i of count drawn beside x on a log axis, so per-seed points do not hide each other."""
    return x * 2 ** (spread * (i - (count - 1) / 2))


def seed_points(ax, x, ys, color, label=None):
    ys = sorted(ys)
    ax.scatter([jitter(x, i, len(ys)) for i in range(len(ys))], ys, s=12, color=color, alpha=0.6, label=label)


def log2_batch_axis(ax, batches):
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [fmt_key(b) for b in batches])
    ax.minorticks_off()


# ---------------------------------------------------------------- Q1: batch size

EVALUATIONS = ("running BN", "precise BN", "GroupNorm")


def evaluation_runs(loaded):
    """Evaluation mode -> the 3-epoch runs of lab1_batch_size (BN, both evaluations) and lab1_groupnorm."""
    rows = loaded.get("lab1_batch_size", ([], []))[0]
    return {"running BN": where(rows, precise_bn=False), "precise BN": where(rows, precise_bn=True),
            "GroupNorm": loaded.get("lab1_groupnorm", ([], []))[0]}


def report_bn_diagnosis(loaded, out_dir):
    runs = evaluation_runs(loaded)
    batches = sorted({r["batch_size"] for rs in runs.values() for r in rs})
    if not batches:
        return {}
    head = ["batch_size", *[f"test/acc, {e}" for e in EVALUATIONS], "precise − running (paired)"]
    rows = []
    for b in batches:
        cells = [fmt_ci(mean_ci(values(where(runs[e], batch_size=b), "test/acc"))) for e in EVALUATIONS]
        gain = paired(by_seed(where(runs["precise BN"], batch_size=b), "test/acc"),
                      by_seed(where(runs["running BN"], batch_size=b), "test/acc"))
        rows.append([fmt_key(b), *cells, fmt_ci(gain)])
    blocks = {"bn_diagnosis": write_table(out_dir, "bn_diagnosis", head, rows)}

    # What is left of the batch effect: each batch size against batch 16, paired by seed, per evaluation
    head = ["evaluation", *[f"{fmt_key(b)} − {fmt_key(batches[0])}" for b in batches[1:]]]
    rows = [[e, *[fmt_ci(paired(by_seed(where(runs[e], batch_size=b), "test/acc"),
                                 by_seed(where(runs[e], batch_size=batches[0]), "test/acc"))) for b in batches[1:]]]
            for e in EVALUATIONS] if batches else []
    blocks["batch_effect"] = write_table(out_dir, "batch_effect", head, rows)

    figure_accuracy_by_batch({f"{e} (mean)": lambda b, e=e: where(runs[e], batch_size=b) for e in EVALUATIONS},
                             batches, 0, "test accuracy", "3 epochs, AdamW lr 0.002: dots are seeds (n=5 each)",
                             out_dir / "figures" / "bn_diagnosis.png")
    return blocks


def figure_accuracy_by_batch(groups, batches, bottom, ylabel, title, path):
    """Test accuracy against batch size: a line through the means and a dot per seed, for each group
    ({label: batch -> runs})."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for (label, runs), color in zip(groups.items(), ("tab:red", "tab:blue", "tab:green"), strict=False):
        for b in batches:
            seed_points(ax, b, values(runs(b), "test/acc"), color)
        ax.plot(batches, [np.mean(values(runs(b), "test/acc") or [np.nan]) for b in batches], color=color,
                label=label)
    log2_batch_axis(ax, batches)
    ax.set_ylim(bottom, 1.0 if bottom else 1.02)
    ax.set(xlabel="batch size (images)", ylabel=ylabel, title=title)
    ax.legend(fontsize=8, loc="lower left")
    save(fig, path)


TIME_METRICS = (("time/train_s", "s", 2), ("throughput/train_img_s", "img/s", 0),
                ("memory/activations_mb", "MB", 2), ("memory/peak_mb", "MB", 0))


def report_batch_time(loaded, out_dir):
    rows = completed(loaded.get("lab1_batch_time", ([], []))[0])
    batches = sorted({r["batch_size"] for r in rows})
    if not batches:
        return {}
    head = ["batch_size", "updates", *[f"{m} ({u})" for m, u, _ in TIME_METRICS]]
    table = []
    for b in batches:
        group = where(rows, batch_size=b)
        table.append([fmt_key(b), fmt_key(group[0]["update"])]
                     + [fmt_ci(mean_ci(values(group, m)), d) for m, _, d in TIME_METRICS])
    blocks = {"batch_time": write_table(out_dir, "batch_time", head, table)}

    # Activation memory is linear in the batch: a least-squares line through every run
    xs, ys = [r["batch_size"] for r in rows], [r["memory/activations_mb"] for r in rows]
    fit = stats.linregress(xs, ys)
    relative = max(abs(y - fit.intercept - fit.slope * x) / y for x, y in zip(xs, ys, strict=True))
    means = {b: np.mean(values(where(rows, batch_size=b), "throughput/train_img_s")) for b in batches}
    head = ["quantity", "value"]
    table = [["activations per image (MB), least squares", fmt(fit.slope, 4)],
             ["intercept (MB)", fmt(fit.intercept, 3)],
             ["largest relative residual", f"{relative:.1e}"],
             ["R²", fmt(fit.rvalue ** 2, 6)],
             [f"throughput ratio, batch {fmt_key(batches[-1])} / batch {fmt_key(batches[0])}",
              fmt(means[batches[-1]] / means[batches[0]], 2)]]
    blocks["memory_fit"] = write_table(out_dir, "memory_fit", head, table)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (metric, unit, _) in zip(axes, TIME_METRICS[:3], strict=True):
        for b in batches:
            seed_points(ax, b, values(where(rows, batch_size=b), metric), "tab:blue")
        ax.plot(batches, [np.mean(values(where(rows, batch_size=b), metric)) for b in batches], color="tab:blue")
        log2_batch_axis(ax, batches)
        ax.set_yscale("log")
        ax.set(xlabel="batch size (images)", ylabel=f"{metric} ({unit})")
    axes[2].plot(batches, [fit.intercept + fit.slope * b for b in batches], "k--",
                 label=f"{fit.slope:.3f} MB/image + {fit.intercept:.2f} MB")
    axes[2].legend(fontsize=8)
    axes[0].set_title("one epoch's training time")
    axes[1].set_title("training throughput")
    axes[2].set_title("memory saved for backward")
    fig.suptitle(f"one epoch on 2 CPU cores; dots are repeats (n={len(rows) // len(batches)} each)", fontsize=9)
    save(fig, out_dir / "figures" / "batch_time.png")
    return blocks


def tuned_lr_runs(loaded):
    """Per batch size, the 3-epoch runs of the lr with the best mean val/acc_final over seeds 0-2: lab1_batch_lr's
    lrs and lab1_batch_size's precise runs at 0.002. -> {batch: (lr, runs)}."""
    candidates = loaded.get("lab1_batch_lr", ([], []))[0] + [
        r for r in where(loaded.get("lab1_batch_size", ([], []))[0], precise_bn=True) if r["seed"] in (0.0, 1.0, 2.0)]
    tuned = {}
    for b in sorted({r["batch_size"] for r in candidates}):
        lrs = sorted({r["lr"] for r in where(candidates, batch_size=b)})
        score = {lr: np.mean(values(where(candidates, batch_size=b, lr=lr), "val/acc_final") or [-1]) for lr in lrs}
        best = max(lrs, key=lambda lr: (score[lr], -lr))  # a tie: the smaller lr
        tuned[b] = (best, where(candidates, batch_size=b, lr=best))
    return tuned


def report_generalisation(loaded, out_dir):
    epochs = evaluation_runs(loaded)["precise BN"]
    updates = loaded.get("lab1_equal_updates", ([], []))[0]
    tuned = tuned_lr_runs(loaded)
    batches = sorted({r["batch_size"] for r in epochs + updates} | tuned.keys())
    if not batches:
        return {}
    ways = {"equal epochs (3)": lambda b: where(epochs, batch_size=b),
            "equal updates (60)": lambda b: where(updates, batch_size=b),
            "lr tuned on val (3 epochs)": lambda b: tuned.get(b, (None, []))[1]}
    head = ["batch_size", *[f"test/acc, {w}" for w in ways], "tuned lr"]
    rows = [[fmt_key(b), *[fmt_ci(mean_ci(values(runs(b), "test/acc"))) for runs in ways.values()],
             fmt_key(tuned[b][0]) if b in tuned else "n/a"] for b in batches]
    if len(batches) > 1:
        rows.append([f"{fmt_key(batches[-1])} − {fmt_key(batches[0])}, paired"]
                    + [fmt_ci(paired(by_seed(runs(batches[-1]), "test/acc"), by_seed(runs(batches[0]), "test/acc")))
                       for runs in ways.values()] + [""])
    blocks = {"generalisation": write_table(out_dir, "generalisation", head, rows)}

    figure_accuracy_by_batch(ways, batches, 0.8, "test accuracy (axis from 0.8)",
                             "precise BN; dots are seeds (n=5, tuned n=3)", out_dir / "figures" / "generalisation.png")
    return blocks


# ---------------------------------------------------------------- Q2: epochs

def curve(history, run_id, metric):
    """One run's (epoch, value) points, in order."""
    return [(h["epoch"], h[metric]) for h in history if h["run_id"] == run_id and is_number(h.get(metric))]


def report_epochs(loaded, out_dir):
    rows, history = loaded.get("lab1_epochs", ([], []))
    full = where(rows, early_stopping_patience=0.0)
    stopped = where(rows, early_stopping_patience=5.0)
    noises = sorted({r["label_noise"] for r in rows})
    if not noises:
        return {}
    head = ["label_noise", "epoch of lowest val/loss", "val/loss there", "val/loss at the last epoch",
            "rise (paired)", "val/acc there", "val/acc at the last epoch", "train/loss at the last epoch"]
    table = []
    for p in noises:
        runs = completed(where(full, label_noise=p))
        curves = {r["seed"]: curve(history, r["run_id"], "val/loss") for r in runs}
        accs = {r["seed"]: dict(curve(history, r["run_id"], "val/acc")) for r in runs}
        best = {s: min(c, key=lambda point: point[1]) for s, c in curves.items() if c}
        table.append([fmt_key(p), fmt_ci(mean_ci(e for e, _ in best.values()), 1),
                      fmt_ci(mean_ci(v for _, v in best.values())),
                      fmt_ci(mean_ci(c[-1][1] for c in curves.values() if c)),
                      fmt_ci(paired({s: c[-1][1] for s, c in curves.items() if c},
                                    {s: v for s, (_, v) in best.items()})),
                      fmt_ci(mean_ci(accs[s][e] for s, (e, _) in best.items())),
                      fmt_ci(mean_ci(values(runs, "val/acc_final"))),
                      fmt_ci(mean_ci(values(runs, "train/loss")), 4)])
    blocks = {"overfitting": write_table(out_dir, "overfitting", head, table)}

    head = ["label_noise", "stopped at epoch", "test/acc, early stopped (best-val weights)",
            "test/acc, 30 epochs (last weights)", "early − last (paired)", "training time, early (s)",
            "training time, 30 epochs (s)", "time to the lowest val/loss (s)"]
    table = []
    for p in noises:
        early, last = completed(where(stopped, label_noise=p)), completed(where(full, label_noise=p))
        to_best = []
        for r in last:
            points = [h for h in history if h["run_id"] == r["run_id"] and is_number(h.get("val/loss"))]
            if points:
                to_best.append(min(points, key=lambda h: h["val/loss"])["time/train_s"])
        table.append([fmt_key(p), fmt_ci(mean_ci(values(early, "epoch")), 1),
                      fmt_ci(mean_ci(values(early, "test/acc"))),
                      fmt_ci(mean_ci(values(last, "test/acc"))),
                      fmt_ci(paired(by_seed(early, "test/acc"), by_seed(last, "test/acc"))),
                      fmt_ci(mean_ci(values(early, "time/train_s")), 1),
                      fmt_ci(mean_ci(values(last, "time/train_s")), 1), fmt_ci(mean_ci(to_best), 1)])
    blocks["early_stopping"] = write_table(out_dir, "early_stopping", head, table)

    fig, axes = plt.subplots(1, len(noises), figsize=(6 * len(noises), 4), squeeze=False)
    for ax, p in zip(axes[0], noises, strict=True):
        runs = completed(where(full, label_noise=p))
        for metric, style in (("val/loss", "-"), ("train/loss", "--")):
            for i, r in enumerate(runs):
                xs, ys = zip(*curve(history, r["run_id"], metric), strict=True)
                ax.plot(xs, ys, style, color="tab:blue" if metric == "val/loss" else "tab:gray", alpha=0.7,
                        label=metric if i == 0 else None)
        ax.set_yscale("log")
        ax.set(xlabel="epoch", ylabel="cross-entropy loss (log)",
               title=f"label noise {p:g}: constant lr, one line per seed (n={len(runs)})")
        ax.legend(fontsize=8)
    save(fig, out_dir / "figures" / "overfitting.png")

    blocks.update(report_cosine(loaded, history, full, out_dir))
    return blocks


def report_cosine(loaded, constant_history, constant_runs, out_dir):
    rows = loaded.get("lab1_epochs_cosine", ([], []))[0]
    if not rows:
        return {}
    head = ["epochs", "label_noise", "cosine: val/acc at the end", "cosine: test/acc", "cosine: train/loss",
            "cosine: val/loss at the end", "constant lr: val/acc at that epoch", "constant lr: val/loss there"]
    table = []
    for e in sorted({r["epochs"] for r in rows}):
        for p in sorted({r["label_noise"] for r in rows}):
            runs = where(rows, epochs=e, label_noise=p)
            constant = [h for h in constant_history if h["epoch"] == e and h["label_noise"] == p
                        and h["run_id"] in {r["run_id"] for r in completed(where(constant_runs, label_noise=p))}]
            table.append([fmt_key(e), fmt_key(p), fmt_ci(mean_ci(values(runs, "val/acc_final"))),
                          fmt_ci(mean_ci(values(runs, "test/acc"))), fmt_ci(mean_ci(values(runs, "train/loss")), 4),
                          fmt_ci(mean_ci(values(runs, "val/loss_final"))),
                          fmt_ci(mean_ci(h["val/acc"] for h in constant)),
                          fmt_ci(mean_ci(h["val/loss"] for h in constant))])
    return {"cosine": write_table(out_dir, "cosine", head, table)}


def report_one_epoch(loaded, out_dir):
    rows = loaded.get("lab1_one_epoch", ([], []))[0]
    if not rows:
        return {}
    running, precise = where(rows, precise_bn=False), where(rows, precise_bn=True)
    head = ["metric", "running BN", "precise BN", "precise − running (paired)"]
    table = [[m, fmt_ci(mean_ci(values(running, m))), fmt_ci(mean_ci(values(precise, m))),
              fmt_ci(paired(by_seed(precise, m), by_seed(running, m)))] for m in ("val/acc_final", "test/acc")]
    return {"one_epoch": write_table(out_dir, "one_epoch", head, table)}


# ---------------------------------------------------------------- Q3: learning rate

def rises(points):
    """How many evaluation intervals in which the train loss went up: 0 for a loss that only falls."""
    return sum(b > a for (_, a), (_, b) in zip(points, points[1:], strict=False))


def report_lr_curves(loaded, sweep, name, title, out_dir):
    rows, history = loaded.get(sweep, ([], []))
    lrs = sorted({r["lr"] for r in rows})
    if not lrs:
        return {}
    head = ["lr", "runs", "status", "train/loss at the end", "rises of train/loss (of intervals)",
            "val/acc at the end", "test/acc"]
    table = []
    for lr in lrs:
        runs = where(rows, lr=lr)
        curves = [curve(history, r["run_id"], "train/loss") for r in runs]
        statuses = sorted({r["status"] for r in runs})
        table.append([f"{lr:g}", str(len(runs)), "/".join(statuses), fmt_ci(mean_ci(values(runs, "train/loss")), 4),
                      f"{fmt(np.mean([rises(c) for c in curves]), 1)} of {max(len(c) for c in curves) - 1}"
                      if max(len(c) for c in curves) > 1 else "no finite loss",
                      fmt_ci(mean_ci(values(runs, "val/acc_final"))), fmt_ci(mean_ci(values(runs, "test/acc")))])
    blocks = {name: write_table(out_dir, name, head, table)}

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    colors = plt.cm.tab10(np.arange(len(lrs)) % 10)
    for lr, color in zip(lrs, colors, strict=True):
        for i, r in enumerate(where(rows, lr=lr)):
            points = [(h["update"], h["train/loss"], h["val/acc"]) for h in history
                      if h["run_id"] == r["run_id"] and h.get("update") is not None]
            label = f"lr {lr:g}" + (f" ({r['status']})" if r["status"] != "finished" else "") if i == 0 else None
            finite = [p for p in points if is_number(p[1])]
            if finite:
                axes[0].plot([p[0] for p in finite], [p[1] for p in finite], color=color, alpha=0.8, label=label)
            if len(finite) < len(points):  # the loss became NaN or infinite: mark where
                axes[0].plot(points[len(finite)][0], 1e3 if not finite else finite[-1][1], "x", color=color,
                             markersize=10)
            axes[1].plot([p[0] for p in points if is_number(p[2])], [p[2] for p in points if is_number(p[2])],
                         color=color, alpha=0.8, label=label)
    axes[0].set_yscale("log")
    axes[0].set(xlabel="update (optimizer step)", ylabel="train loss since the last point (log)",
                title=f"{title}: one line per seed; x: became NaN")
    axes[1].set_ylim(0, 1.02)
    axes[1].set(xlabel="update (optimizer step)", ylabel="val accuracy", title="validation accuracy (precise BN)")
    axes[0].legend(fontsize=7, loc="upper left")
    save(fig, out_dir / "figures" / f"{name}.png")
    return blocks


# ---------------------------------------------------------------- Q4: learning rate and batch size

def steps_cells(rows):
    """{batch: {lr_base: {seed: updates to the target}}}; a run that ended without reaching it (its epochs ran
    out, or it diverged) counts as infinitely many updates; a failed run is left out."""
    cells = {}
    for r in rows:
        if r["status"] not in runfiles.COMPLETED:
            continue
        reached = r["status"] == "reached_target" and is_number(r.get("target/updates"))
        cells.setdefault(r["batch_size"], {}).setdefault(r["lr_base"], {})[r["seed"]] = \
            r["target/updates"] if reached else math.inf
    return cells


def cell_mean(updates):
    return float(np.mean(updates)) if updates and all(map(math.isfinite, updates)) else math.inf


def best_lr(means):
    """{lr_base: mean updates} -> (lr_base at the minimum of a parabola in log lr through the finite cells, the
    grid's fewest updates). The optimum is NaN where the parabola opens downwards or its minimum lies outside
    the grid: the grid does not bracket it."""
    finite = {lr: m for lr, m in means.items() if math.isfinite(m)}
    best = min(finite.values(), default=math.inf)
    if len(finite) < 3:
        return math.nan, best
    x, y = np.log(list(finite)), np.log(list(finite.values()))
    a, b, _ = np.polyfit(x, y, 2)
    vertex = -b / (2 * a) if a > 0 else math.nan
    inside = math.isfinite(vertex) and x.min() <= vertex <= x.max()
    return (float(math.exp(vertex)) if inside else math.nan), best


def fit_critical_batch(batches, steps):
    """S(B) = S_min (1 + B_crit / B) by least squares in log S (McCandlish et al. 2018, eq. 2.11) -> (S_min,
    B_crit); NaN when fewer than 3 batch sizes reach the target."""
    points = [(b, s) for b, s in zip(batches, steps, strict=True) if math.isfinite(s)]
    if len(points) < 3:
        return math.nan, math.nan
    bs, ss = np.array(points).T

    def residuals(p):
        return np.log(np.exp(p[0]) * (1 + np.exp(p[1]) / bs)) - np.log(ss)

    fit = optimize.least_squares(residuals, x0=[math.log(ss.min()), math.log(np.median(bs))])
    return float(math.exp(fit.x[0])), float(math.exp(fit.x[1]))


def lr_slope(batches, lr_bases):
    """Least-squares slope of log lr* against log B (lr* = lr_base* B / 256: the lr itself); NaN unless every
    batch size has an optimum, so that every estimate is over the same batch sizes."""
    if len(batches) < 2 or not all(map(math.isfinite, lr_bases)):
        return math.nan
    lrs = [lb * b / 256 for b, lb in zip(batches, lr_bases, strict=True)]
    return stats.linregress(np.log(batches), np.log(lrs)).slope


def analyse_steps(cells):
    """-> {batch: (lr_base*, S)}, (S_min, B_crit), slope: the estimates from these cells."""
    per_batch = {b: best_lr({lr: cell_mean(list(seeds.values())) for lr, seeds in sorted(lrs.items())})
                 for b, lrs in sorted(cells.items())}
    batches = list(per_batch)
    fit = fit_critical_batch(batches, [s for _, s in per_batch.values()])
    return per_batch, fit, lr_slope(batches, [lr for lr, _ in per_batch.values()])


def bootstrap_steps(cells, reps=BOOTSTRAP):
    """The estimates of analyse_steps over resamples of each cell's seeds (with replacement); a fixed generator,
    so the report is the same every time. -> list of analyse_steps results."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(reps):
        sample = {b: {lr: dict(enumerate(rng.choice(list(seeds.values()), len(seeds)))) for lr, seeds in lrs.items()}
                  for b, lrs in cells.items()}
        out.append(analyse_steps(sample))
    return out


STEPS = ("lab1_steps", "lab1_steps_up", "lab1_steps_down")  # one grid: the second two extend the first's edges


def steps_rows(loaded):
    return [r for sweep in STEPS for r in loaded.get(sweep, ([], []))[0]]


def report_steps(loaded, out_dir):
    cells = steps_cells(steps_rows(loaded))
    if not cells:
        return {}, None
    per_batch, (s_min, b_crit), slope = analyse_steps(cells)
    boot = bootstrap_steps(cells)
    batches = list(per_batch)

    head = ["batch_size", *[f"lr_base {lr:g}" for lr in sorted({lr for lrs in cells.values() for lr in lrs})]]
    table = []
    for b in batches:
        row = [fmt_key(b)]
        for lr in sorted({lr for lrs in cells.values() for lr in lrs}):
            updates = list(cells[b].get(lr, {}).values())
            reached = [u for u in updates if math.isfinite(u)]
            row.append("n/a" if not updates else
                       f"{fmt(np.mean(reached), 1) if reached else '–'} ({len(reached)}/{len(updates)})")
        table.append(row)
    blocks = {"steps": write_table(out_dir, "steps", head, table)}

    head = ["batch_size", "best lr_base (fit in log lr)", "resamples with an optimum in the grid",
            "best lr = lr_base × B/256", "updates to 0.97 (grid best)", "examples to 0.97"]
    table = []
    for b in batches:
        lr_b, s = per_batch[b]
        lr_boot = [p[b][0] for p, _, _ in boot]
        s_ci = percentile_interval([p[b][1] for p, _, _ in boot])
        table.append([fmt_key(b), fmt_interval(lr_b, *percentile_interval(lr_boot), 3), share_defined(lr_boot),
                      fmt(lr_b * b / 256, 4), fmt_interval(s, *s_ci, 1), fmt(s * b, 0)])
    blocks["steps_best"] = write_table(out_dir, "steps_best", head, table)

    smin_ci = percentile_interval([f[0] for _, f, _ in boot])
    bcrit_ci = percentile_interval([f[1] for _, f, _ in boot])
    slope_ci = percentile_interval([sl for _, _, sl in boot])
    lrs = {b: per_batch[b][0] * b / 256 for b in batches if math.isfinite(per_batch[b][0])}
    head = ["quantity", "estimate [95% bootstrap interval]"]
    table = [["S_min (updates)", fmt_interval(s_min, *smin_ci, 1)],
             ["B_crit (images)", fmt_interval(b_crit, *bcrit_ci, 0)],
             ["E_min = S_min × B_crit (images)", fmt(s_min * b_crit, 0)],
             ["slope of log lr* on log B", fmt_interval(slope, *slope_ci, 2)
              + f" (defined in {share_defined([sl for _, _, sl in boot])} of resamples)"]]
    blocks["critical_batch"] = write_table(out_dir, "critical_batch", head, table)

    # Which scaling rule fits the optima: each rule's shape with its constant fitted, residual in decades
    head = ["rule", "lr* ∝", "slope", "rms residual (decades of lr)"]
    table = []
    xs = np.array(list(lrs))
    ys = np.log10(list(lrs.values())) if lrs else np.array([])
    shapes = [("least-squares fit", "B^slope", np.log10(xs) * slope),
              ("linear (Goyal et al. 2017)", "B", np.log10(xs)),
              ("square root (Hoffer et al. 2017)", "√B", 0.5 * np.log10(xs)),
              ("Smith & Le 2018, g = lr N/B held fixed, N = 1259", "B/(N − B)", np.log10(xs / (TRAIN_SIZE - xs)))]
    for rule, form, shape in shapes:
        if len(ys) >= 2:
            resid = ys - shape - np.mean(ys - shape)
            local = stats.linregress(np.log10(xs), shape).slope
            table.append([rule, form, fmt(local, 2), fmt(float(np.sqrt(np.mean(resid ** 2))), 3)])
    blocks["lr_rules"] = write_table(out_dir, "lr_rules", head, table)

    figure_steps(cells, per_batch, boot, (s_min, b_crit), slope, lrs, out_dir)
    return blocks, b_crit


def figure_steps(cells, per_batch, boot, fit, slope, lrs, out_dir):
    batches = list(per_batch)
    colors = dict(zip(batches, plt.cm.viridis(np.linspace(0, 0.9, len(batches))), strict=True))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ax = axes[0]
    ceiling = max(u for lrs_ in cells.values() for s in lrs_.values() for u in s.values() if math.isfinite(u)) * 1.6
    for b in batches:
        grid = sorted(cells[b])
        for lr in grid:
            ups = sorted(cells[b][lr].values())
            for i, u in enumerate(ups):
                ax.scatter(jitter(lr, i, len(ups), 0.04), u if math.isfinite(u) else ceiling, s=12,
                           marker="o" if math.isfinite(u) else "x", color=colors[b], alpha=0.7)
        means = [cell_mean(list(cells[b][lr].values())) for lr in grid]
        ax.plot(grid, [m if math.isfinite(m) else np.nan for m in means], color=colors[b],
                label=f"batch {fmt_key(b)}")
        if math.isfinite(per_batch[b][0]):
            ax.axvline(per_batch[b][0], color=colors[b], ls=":", lw=1)
    ax.axhline(ceiling, color="gray", lw=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="lr_base (lr at 256 images; lr = lr_base × B/256)", ylabel="updates to val/acc 0.97",
           title="dots: seeds; x: never reached; dotted: fitted optimum")
    ax.legend(fontsize=7)

    ax = axes[1]
    s = [per_batch[b][1] for b in batches]
    low_high = [percentile_interval([p[b][1] for p, _, _ in boot]) for b in batches]
    ax.errorbar(batches, s, yerr=[[si - lo for si, (lo, _) in zip(s, low_high, strict=True)],
                                  [hi - si for si, (_, hi) in zip(s, low_high, strict=True)]],
                fmt="o", color="k", capsize=3, label="updates (grid best, 95% bootstrap)")
    ax.errorbar(batches, [si * b for si, b in zip(s, batches, strict=True)], fmt="s", color="tab:orange",
                label="examples = updates × B")
    if math.isfinite(fit[1]):
        span = np.geomspace(min(batches), max(batches), 50)
        ax.plot(span, fit[0] * (1 + fit[1] / span), "k--", label=f"S_min(1 + B_crit/B), B_crit = {fit[1]:.0f}")
        ax.plot(span, fit[0] * (span + fit[1]), "--", color="tab:orange", label="E_min(1 + B/B_crit)")
    log2_batch_axis(ax, batches)
    ax.set_yscale("log")
    ax.set(xlabel="batch size (images)", ylabel="to val/acc 0.97", title="steps and examples to the target")
    ax.legend(fontsize=7)

    ax = axes[2]
    bs = [b for b in batches if b in lrs]
    cis = [percentile_interval([p[b][0] * b / 256 for p, _, _ in boot]) for b in bs]
    ax.errorbar(bs, [lrs[b] for b in bs], yerr=[[max(0, lrs[b] - lo) if math.isfinite(lo) else 0 for b, (lo, _) in
                                                  zip(bs, cis, strict=True)],
                                                 [hi - lrs[b] if math.isfinite(hi) else 0 for b, (_, hi) in
                                                  zip(bs, cis, strict=True)]], fmt="o", color="k", capsize=3,
                label="optimum lr (fit in log lr, 95% bootstrap)")
    if len(bs) >= 2:
        span = np.geomspace(min(bs), max(bs), 50)
        anchor = np.exp(np.mean([math.log(lrs[b]) - slope * math.log(b) for b in bs]))
        ax.plot(span, anchor * span ** slope, "k--", label=f"fit: slope {slope:.2f}")
        for power, style in ((1, ":"), (0.5, "-.")):
            c = np.exp(np.mean([math.log(lrs[b]) - power * math.log(b) for b in bs]))
            ax.plot(span, c * span ** power, style, color="gray", label=f"slope {power:g}")
    log2_batch_axis(ax, batches)
    ax.set_yscale("log")
    ax.set(xlabel="batch size (images)", ylabel="lr (SGD, momentum 0.9)", title="optimum lr against batch size")
    ax.legend(fontsize=7)
    n = len(next(iter(next(iter(cells.values())).values())))
    fig.suptitle(f"SGD, constant lr, precise BN, target val/acc 0.97; {n} seeds per cell", fontsize=9)
    save(fig, out_dir / "figures" / "steps.png")


def report_warmup(loaded, out_dir):
    steps = steps_cells(steps_rows(loaded))
    warm = steps_cells(loaded.get("lab1_warmup", ([], []))[0])
    if not warm:
        return {}
    (b,) = warm
    lrs = sorted(set(warm[b]) | set(steps.get(b, {})))
    head = ["lr_base", "updates to 0.97, no warm-up", "with 2 epochs of warm-up"]

    def describe(cells, lr):
        ups = list(cells.get(b, {}).get(lr, {}).values())
        reached = [u for u in ups if math.isfinite(u)]
        return "not run" if not ups else f"{fmt(np.mean(reached), 1) if reached else '–'} ({len(reached)}/{len(ups)})"

    table = [[f"{lr:g}", describe(steps, lr), describe(warm, lr)] for lr in lrs]
    for name, cells in (("no warm-up", {b: steps.get(b, {})}), ("warm-up", warm)):
        (per, _, _), boot = analyse_steps(cells), bootstrap_steps(cells, BOOTSTRAP // 4)
        interval = percentile_interval([p[b][0] for p, _, _ in boot])
        table.append([f"optimum, {name}", fmt_interval(per[b][0], *interval, 3),
                      f"fewest updates {fmt(per[b][1], 1)}"])
    return {"warmup": write_table(out_dir, "warmup", head, table)}


def max_epoch(points):
    return max(h["epoch"] for h in points)


def run_sums(points, runs, keep):
    """Per run, the sums of tr(Σ) and ‖G‖² over its points that keep() selects -> array (runs, 2)."""
    return np.array([[sum(h[k] for h in points if h["run_id"] == r and keep(h))
                      for k in ("noise/trace_sigma", "noise/grad_sq")] for r in runs])


def pooled_b_simple(points, runs, keep):
    """B_simple = sum tr(Σ) / sum ‖G‖² over the selected points of every run (a ratio of means, as McCandlish et
    al. pool them), with a 95% interval from resampling the runs. NaN where the pooled ‖G‖² is not positive."""
    sums = run_sums(points, runs, keep)

    def ratio(s):  # no signal resolved (pooled ‖G‖² <= 0): the noise scale is unbounded
        return s[:, 0].sum() / s[:, 1].sum() if s[:, 1].sum() > 0 else math.inf

    rng = np.random.default_rng(0)
    boot = [ratio(sums[rng.integers(0, len(runs), len(runs))]) for _ in range(BOOTSTRAP)]
    low, high = np.percentile(boot, [2.5, 97.5], method="nearest")  # no interpolation towards an infinity
    return ratio(sums), (float(low), float(high))


def report_noise_scale(loaded, b_crit, out_dir):
    rows, history = loaded.get("lab1_noise_scale", ([], []))
    points = [h for h in history if is_number(h.get("noise/trace_sigma")) and is_number(h.get("noise/grad_sq"))]
    if not points:
        return {}
    head = ["epoch", "runs averaged", "mean tr(Σ)", "mean ‖G‖²", "B_simple = ratio of the means"]
    table, curve_points = [], []
    for e in sorted({h["epoch"] for h in points}):
        at = [h for h in points if h["epoch"] == e]
        trace, grad = np.mean([h["noise/trace_sigma"] for h in at]), np.mean([h["noise/grad_sq"] for h in at])
        curve_points.append((e, trace / grad if grad > 0 else math.inf, len(at)))  # no signal resolved
        table.append([f"{e:g}", str(len(at)), fmt(trace, 3), fmt(grad, 4), fmt(curve_points[-1][1], 0)])
    blocks = {"noise_scale": write_table(out_dir, "noise_scale", head, table)}

    # Over whole runs, and over each epoch: each run's sums, pooled as a ratio of means; runs resampled
    runs = sorted({h["run_id"] for h in points})
    epochs = range(1, math.ceil(max_epoch(points)) + 1)
    pooled = {label: pooled_b_simple(points, runs, keep) for label, keep in [("whole runs", lambda h: True)] + [
        (f"epoch {e}", lambda h, e=e: e - 1 < h["epoch"] <= e) for e in epochs]}
    head = ["estimate", "value"]
    table = [[f"B_simple over {label}, ratio of means (n={len(runs)} runs, 95% bootstrap)",
              fmt_interval(value, *interval, 0)] for label, (value, interval) in pooled.items()]
    sums = run_sums(points, runs, lambda h: True)
    table += [["per run, whole run", ", ".join(fmt(s[0] / s[1] if s[1] > 0 else math.inf, 0) for s in sums)],
              ["B_crit from steps to 0.97 (lab1_steps)", fmt(b_crit, 0) if b_crit is not None else "n/a"],
              ["test/acc of these runs", fmt_ci(mean_ci(values(rows, "test/acc")))]]
    blocks["noise_scale_run"] = write_table(out_dir, "noise_scale_run", head, table)

    fig, ax = plt.subplots(figsize=(6, 4))
    top = 1e4  # where an unbounded estimate or interval is drawn
    finite = [(e, v) for e, v, _ in curve_points if math.isfinite(v)]
    ax.plot(*zip(*finite, strict=True), "ko-", ms=4, label=f"per evaluation point, ratio of means (n={len(runs)} runs)")
    ax.plot([e for e, v, _ in curve_points if not math.isfinite(v)], [top] * (len(curve_points) - len(finite)),
            "k^", label="per point: no signal resolved (‖G‖² ≤ 0)")
    for e in epochs:
        value, (low, high) = pooled[f"epoch {e}"]
        ax.errorbar([e - 0.5], [min(value, top)], yerr=[[min(value, top) - low], [min(high, top) - min(value, top)]],
                    fmt="s", color="tab:blue", capsize=4, label="per epoch, pooled (95% bootstrap)" if e == 1 else None)
    if b_crit is not None and math.isfinite(b_crit):
        ax.axhline(b_crit, color="tab:red", ls="--", label=f"B_crit from steps to target ({b_crit:.0f})")
    ax.set_yscale("log")
    ax.set_ylim(10, top * 1.5)
    ax.set(xlabel="epoch", ylabel="B_simple (images)", title="gradient noise scale, batch 64, SGD lr 0.025")
    ax.legend(fontsize=7, loc="lower right")
    save(fig, out_dir / "figures" / "noise_scale.png")
    return blocks


# ---------------------------------------------------------------- provenance, and the whole report

def report_provenance(loaded, out_dir):
    head = ["sweep", "runs", "statuses", "git_commit", "git_dirty", "torch", "timm", "accelerate", "wandb"]
    table = []
    for sweep, (rows, _) in sorted(loaded.items()):
        statuses = {}
        for r in rows:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        table.append([sweep, str(len(rows)), ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))]
                     + [", ".join(sorted({fmt_key(r.get(k)) for r in rows})) for k in PROVENANCE])
    return {"provenance": write_table(out_dir, "provenance", head, table)}


def regenerate(results_dir, out_dir):
    """Write every table and figure the results allow; rewrite README.md's blocks. -> block names."""
    loaded = load_results(results_dir)
    blocks = {}
    for part in (report_bn_diagnosis, report_batch_time, report_generalisation, report_epochs, report_one_epoch,
                 report_provenance, report_warmup):
        blocks.update(part(loaded, out_dir))
    blocks.update(report_lr_curves(loaded, "lab1_lr", "lr_sgd", "SGD momentum 0.9, constant lr", out_dir))
    blocks.update(report_lr_curves(loaded, "lab1_lr_adam", "lr_adam", "AdamW, constant lr", out_dir))
    steps, b_crit = report_steps(loaded, out_dir)
    blocks.update(steps)
    blocks.update(report_noise_scale(loaded, b_crit, out_dir))
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


def import_sweeps(sweeps_dir, results_dir, force=False):
    """Each sweep.py folder's results.csv -> <sweep>.csv, each row with its run's commit and versions (from its
    config.json), and its runs' history.csv files -> <sweep>_history.csv. Results already in results_dir are
    replaced only with force: they are what the committed report was made from."""
    found = sorted(Path(sweeps_dir).glob("*/results.csv"))
    if not found:
        raise ReportError(f"no */results.csv under {sweeps_dir}: run sweep.py first, or pass its output folder")
    clash = [results_dir / f"{p.parent.name}.csv" for p in found if (results_dir / f"{p.parent.name}.csv").exists()]
    if clash and not force:
        raise ReportError(f"{clash[0]} exists ({len(clash)} of the {len(found)} sweeps would be replaced): pass "
                          "--force to replace the results, or --results NEW_DIR to import beside them")
    results_dir.mkdir(parents=True, exist_ok=True)
    for results in found:
        sweep = results.parent.name
        with open(results, newline="") as f:
            rows = list(csv.DictReader(f))
        runs = []
        for row in rows:
            config = runfiles.read_json(results.parent / row["run_id"] / runfiles.CONFIG) or {}
            row.update({k: cell(config.get(k)) for k in PROVENANCE})
            history = runfiles.read_history(results.parent / row["run_id"] / runfiles.HISTORY)
            if history:
                runs.append((row["run_id"], history))
        head = list(rows[0]) if rows else ["run_id", "status", "exit_code", *PROVENANCE]
        with open(results_dir / f"{sweep}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, head, restval="", lineterminator="\n")
            writer.writeheader()
            writer.writerows(sorted(rows, key=lambda r: r["run_id"]))
        write_history(results_dir / f"{sweep}_history.csv", sorted(runs))
        print(f"report: imported {sweep} ({len(rows)} runs, {len(runs)} histories)")


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
                        if not k.startswith("_") and k not in {*params, "status", "wandb_run_dir", *PROVENANCE}}
                 for r in runs}
    metrics = sorted({k for summary in summaries.values() for k, v in summary.items() if v is not None})
    rows = []
    for r in sorted(runs, key=lambda r: r.id):
        # train.py's own status is the precise one: a diverged or oom run still exits 0 ("finished" in W&B)
        status = r.summary_metrics.get("status") or W_AND_B_STATE[r.state]
        rows.append([r.id, status, ""] + [cell(r.config.get(p)) for p in params]
                    + [cell(summaries[r.id].get(m)) for m in metrics] + [cell(r.config.get(k)) for k in PROVENANCE])
    return ["run_id", "status", "exit_code", *params, *metrics, *PROVENANCE], rows


def wandb_history(records):
    """A run's scan_history() rows -> history rows: the evaluation points (rows with `epoch`), scalars only."""
    return [{k: cell(v) for k, v in rec.items() if not k.startswith("_") and isinstance(v, SCALAR)}
            for rec in records if "epoch" in rec]


def import_wandb(path, results_dir, name=None, api=None, force=False):
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
    if (results_dir / f"{name}.csv").exists() and not force:
        raise ReportError(f"{results_dir / f'{name}.csv'} exists: pass --force to replace it, or --results NEW_DIR")
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
        return [wr.LinePlot(title=f"{m} per evaluation point" + (f" by {by}" if by else ""), x="epoch", y=[m],
                            groupby=wr.Config(by) if by else None, groupby_aggfunc="mean",
                            groupby_rangefunc="stddev") for m in metrics]

    def parallel(params, metrics):
        columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(p), log=p == "lr") for p in params]
        columns += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(m)) for m in metrics]
        return wr.ParallelCoordinatesPlot(title=" x ".join(params), columns=columns)

    return {
        "bn_diagnosis": ("lab1_batch_size", [parallel(["batch_size", "precise_bn"], ["val/acc_final", "test/acc"])]),
        "batch_time": ("lab1_batch_time", bars("batch_size", ["time/train_s", "throughput/train_img_s",
                                                              "memory/activations_mb"])),
        "generalisation": ("lab1_equal_updates", bars("batch_size", ["test/acc"])),
        "overfitting": ("lab1_epochs", curves("label_noise", ["val/loss", "train/loss"])),
        "lr_sgd": ("lab1_lr", curves("lr", ["train/loss", "val/acc"])),
        "lr_adam": ("lab1_lr_adam", curves("lr", ["train/loss", "val/acc"])),
        "steps": ("lab1_steps", [parallel(["batch_size", "lr_base"], ["target/updates", "target/examples"])]),
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
    p.add_argument("--force", action="store_true",
                   help="let --from_sweeps and --wandb replace results already in --results")
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
            import_sweeps(args.from_sweeps, args.results, args.force)
        for path in args.wandb:
            import_wandb(path, args.results, args.sweep_name, force=args.force)
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
