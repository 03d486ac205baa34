"""Lab 1 report: tables, figures and the numbers in the README's prose, regenerated from the raw sweep results.

    python lab1/report.py                                 # regenerate tables/, figures/, README.md blocks
    python lab1/report.py --from_sweeps runs/sweeps       # import sweep.py's folders (--force: replace), regenerate
    python lab1/report.py --wandb ENTITY/PROJECT/SWEEP_ID # import W&B sweeps (network; repeatable), then regenerate
    python lab1/report.py --publish ENTITY/PROJECT        # also save README.md as a W&B Report (network)

Inputs (formats in INTERFACE.md): results/<sweep>.csv, one row per run: its parameters, summary, provenance and
settings (lr, global batch, lr_base_size, split sizes, target, processes, accumulation: every fact the report
states about a run is a column, never a literal here); results/<sweep>_history.csv, one row per run and evaluation
point; results/sweep_times.csv, each sweep's wall time as measured when it ran; results/gap_line.csv (LINE),
lab1/interpolate.py's line between 1e's models, made by the command the README gives.

Outputs, deterministic (sorted rows, fixed formats, a seeded bootstrap, no timestamps): tables/<name>.md and .csv;
figures/<name>.png and figures/<name>.csv, the data each figure draws (panel, series, x, y, interval; what the
tests compare, since a PNG's bytes change with matplotlib's version); README.md's blocks between
`<!-- table:NAME -->` and `<!-- /table:NAME -->` and between `<!-- text:NAME -->` and `<!-- /text:NAME -->`. The
prose outside the blocks holds no number (tests/test_report.py checks it): a sentence that states a number or a
comparison is written here, from the data.

Sections: SECTIONS, near the end, is the one table of the report's parts. Each row names the sweeps a section
reads, its function, and each figure it draws with the sweep and W&B panels that show that figure live in the
published Report (build_report). A section runs when one of its sweeps is in results/ (a row with no sweeps always
runs). To add one: write a function of a Report (it calls report.table, .text, .save and .finding), add its row,
and put its `<!-- table:NAME -->` and `<!-- text:NAME -->` marks in README.md.

Statistics: means over seeds with a 95% Student-t interval (mean ± half-width, n = the runs averaged); values that
span more than a factor SPAN are given as median and range instead. Paired comparisons take the per-seed
differences. Fits in log lr and of S(B) get 95% percentile intervals from a bootstrap over seeds. Only validation
data choose anything (an lr, an epoch); test data are reported, never used.

Words: each comparison word in the text is chosen by a rule under "words" below: a difference gets a direction
("above", "below") only when its 95% interval excludes 0 (`resolved`), else it is "within noise"; "all seeds" only
when every seed agrees (`seeds`); an ordering of estimates with intervals is stated only when the intervals do not
overlap (`apart`); ranks ("worst") are sorted from the numbers they rank.
"""

import argparse
import csv
import math
import re
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np
from scipy import optimize, stats

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.ticker import LogFormatter

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import runfiles  # the file contract between train.py, sweep.py and this report

# Parameters a run's history rows inherit from its results row (the rest of the row is its summary).
PARAMS = ("batch_size", "seed", "lr_base", "label_noise", "early_stopping_patience", "precise_bn", "epochs",
          "warmup_epochs")
PROVENANCE = ("git_commit", "git_dirty", "torch", "timm", "accelerate", "wandb")  # from each run's config.json
# Settings from each run's config.json (--from_sweeps, --wandb), where results.csv lacks them: lr is the resolved
# one (lr_base x global_batch_size / lr_base_size when lr_base is set), global_batch_size is batch_size x
# num_processes x grad_accum_steps, the sizes are the splits' as train.py made them.
SETTINGS = ("dataset", "model", "img_size", "num_classes", "train_size", "val_size", "test_size", "optimizer",
            "scheduler", "lr", "lr_base_size", "global_batch_size", "num_processes", "grad_accum_steps",
            "target_val_acc", "device")
B = "global_batch_size"  # "batch" everywhere in this report: the images one update averages over
TIMES = "sweep_times.csv"  # in results/: sweep, wall_s, date, note (how long `python sweep.py` took)
REPLAY = "replay.csv"  # in results/: older sweeps' runs replayed with the newest sweeps' train.py (lab1/replay.py)
# lab1/interpolate.py's CSV for 1e, in results/ beside the sweeps (load_results skips it): the loss along the line
# from each seed's batch-16 model to its batch-256 model, each at its size's best lr. It is made by the command
# that section_gap writes into the README (text:gap_line_command) from the best lrs' run ids, of the form
#   python lab1/interpolate.py runs/sweeps/lab1_gap_16/RUN_A runs/sweeps/lab1_gap_256/RUN_B ... --points 9 \
#       --alpha_min -0.5 --alpha_max 1.5 --out lab1/results/gap_line.csv
LINE = "gap_line.csv"
NOT_SWEEPS = (TIMES, REPLAY, LINE)  # the files of results/ that are not a sweep's
BOOTSTRAP = 2000  # resamples
SPAN = 100  # values spanning more than this factor: median and range, not mean and interval
AXIS_SPAN = 10  # values spanning more than this factor: a log axis


class ReportError(Exception):
    """A user mistake (missing input, bad argument): one line on stderr, exit code 2."""


# ---------------------------------------------------------------- reading

def load_results(results_dir):
    """sweep name -> (result rows, history rows); each history row carries its run's status, parameters and
    settings. Both files are read with runfiles.read_results, the contract's one reader of results."""
    loaded = {}
    for path in sorted(Path(results_dir).glob("*.csv")):
        if path.stem.endswith("_history") or path.name in NOT_SWEEPS:
            continue
        rows = runfiles.read_results(path)
        for row in rows:
            row.setdefault("status", "failed")
        runs = {row["run_id"]: row for row in rows}
        history = runfiles.read_results(path.with_name(f"{path.stem}_history.csv"))
        for h in history:
            run = runs.get(h["run_id"], {"status": "failed"})
            h.update({k: run.get(k) for k in ("status", *PARAMS, *SETTINGS)})
        loaded[path.stem] = (rows, history)
    return loaded


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def where(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def completed(rows):
    return [r for r in rows if r["status"] in runfiles.COMPLETED]


def values(rows, metric):
    return [r[metric] for r in completed(rows) if is_number(r.get(metric))]


def by_seed(rows, metric):
    return {r["seed"]: r[metric] for r in completed(rows) if is_number(r.get(metric))}


def distinct(rows, key):
    """The values rows hold for key, sorted."""
    return sorted({r[key] for r in rows if r.get(key) is not None})


def only(rows, key):
    """The one value every row has for key (a setting the text states once), None when rows disagree or lack it."""
    found = distinct(rows, key)
    return found[0] if len(found) == 1 else None


def one(rows, key):
    """The one value every row has for key, where the report computes with it (a target, a training-set size);
    runs that disagree are a user mistake."""
    found = distinct(rows, key)
    if len(found) != 1:
        raise ReportError(f"the runs of one report section hold {key} {listing(map(num, found), 'and') or 'none'}, "
                          "where it needs one value: run each value as its own sweep")
    return found[0]


def said(rows, key):
    """What rows hold for key, as the prose lists it."""
    return numbers(distinct(rows, key))


def diff(a, b):
    """{seed: a - b} over the seeds both have."""
    return {s: a[s] - b[s] for s in sorted(a.keys() & b.keys())}


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
    return mean_ci(diff(a, b).values())


def spans(xs, factor=SPAN):
    """Whether positive values span more than factor: beyond SPAN their mean would be the largest one's, so they
    are summarised by median and range; beyond AXIS_SPAN they are drawn on a log axis."""
    xs = [x for x in xs if is_number(x)]
    return bool(xs) and min(xs) > 0 and max(xs) / min(xs) > factor


def bounds(xs, log=False):
    """-> (centre, low, high): the mean and its 95% t interval, geometric (in log space) when log; NaN for none."""
    xs = [math.log(x) if log else x for x in xs if is_number(x) and (x > 0 or not log)]
    mean, half, _ = mean_ci(xs)
    if mean is None:
        return math.nan, math.nan, math.nan
    out = (mean, mean - (half or 0), mean + (half or 0))
    return tuple(math.exp(v) for v in out) if log else out


def percentile_interval(samples):
    """95% percentile interval over the resamples where the estimate exists (see share_defined)."""
    finite = [s for s in samples if s is not None and math.isfinite(s)]
    if len(finite) < 0.5 * len(samples):  # the estimate mostly does not exist: no interval
        return math.nan, math.nan
    return float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))


def defined(samples):
    return sum(s is not None and math.isfinite(s) for s in samples) / len(samples)


def share_defined(samples):
    return pct(defined(samples))


# ---------------------------------------------------------------- formats

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


def fmt_summary(xs, digits=3, n=True):
    """Mean ± interval, or median [lowest, highest] where the values span more than a factor SPAN."""
    xs = [x for x in xs if is_number(x)]
    if spans(xs):
        return f"median {fmt(float(np.median(xs)), digits)} [{fmt(min(xs), digits)}, {fmt(max(xs), digits)}]" + (
            f" (n={len(xs)})" if n else "")
    return fmt_ci(mean_ci(xs), digits, n)


def fmt_interval(estimate, low, high, digits=2):
    return f"{fmt(estimate, digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


def fmt_key(value):
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"
    return "" if value is None else str(value)


def num(value):
    """A setting or count as the prose writes it: 1,259; 0.002; 1e-5; a word as itself."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + m[1].replace("+", "") + m[2], f"{value:g}")


def minutes(seconds):
    """'211 minutes', or '1.2 minutes' below ten, where whole minutes would round a sweep away."""
    return f"{fmt(seconds / 60, 0 if seconds >= 600 else 1)} minutes"


def pct(share):
    return f"{100 * share:.{1 if abs(share) < 0.01 else 0}f}%"


def listing(items, word="and"):
    """'a', 'a and b', 'a, b and c'."""
    items = [str(i) for i in items]
    return f" {word} ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + f" {word} " + items[-1]


def numbers(xs):
    """Settings as the prose lists them: '16, 64 and 256', or '8 to 1,024 in factors of 2' for a long geometric
    series."""
    xs = list(xs)
    ratios = {round(b / a, 6) for a, b in zip(xs, xs[1:], strict=False)} if all(is_number(x) and x > 0 for x in xs) \
        else set()
    if len(xs) >= 4 and len(ratios) == 1:
        return f"{num(xs[0])} to {num(xs[-1])} in factors of {num(ratios.pop())}"
    return listing(num(x) for x in xs)


# How design() says a setting: key -> (prose with {} for the values)
WORDING = {B: "batch {}", "epochs": "{} epochs", "max_updates": "{} updates", "optimizer": "{}", "lr": "lr {}",
           "lr_base": "lr_base {}", "scheduler": "{} lr schedule", "momentum": "momentum {}",
           "weight_decay": "weight decay {}", "label_noise": "label noise {}", "train_size": "{} training images",
           "evals_per_epoch": "evaluated {} times an epoch", "warmup_epochs": "{} epochs of warm-up",
           "target_val_acc": "target val/acc {}"}


def design(rows, *keys):
    """What rows vary and share, in words: 'batch 16, 64 and 256, 3 epochs, adamw, lr 0.002, 5 seeds'."""
    parts = [f"{len(distinct(rows, k))} seeds" if k == "seed" else WORDING[k].format(numbers(distinct(rows, k)))
             for k in keys if distinct(rows, k)]
    return re.sub(r"\b1 (epoch|update)s\b", r"1 \1", ", ".join(parts))


# ---------------------------------------------------------------- words: the rules that choose them

def resolved(ci):
    """A difference is resolved when its 95% interval excludes 0; only then does the text give it a direction."""
    mean, half, _ = ci
    return mean is not None and half is not None and abs(mean) > half


def seeds(k, n, unit="seeds"):
    """'all 5 seeds' only when every one agrees."""
    if k == n:
        return f"both {unit}" if n == 2 else f"all {n} {unit}"
    return f"{k} of {n} {unit}" if k else f"none of the {n} {unit}"


def compare(a, b, diffs, more="above", less="below", digits=3, unit="seeds", units=""):
    """{seed: a - b} -> ('a is 0.033 ± 0.002 below b in all 5 seeds', True) when the difference is resolved, else
    ('a is within noise of b (-0.018 ± 0.022; negative in all 3 seeds)', False). units: of the values (' s')."""
    diffs = list(diffs.values() if isinstance(diffs, dict) else diffs)
    mean, half, n = ci = mean_ci(diffs)
    if n < 2:
        return f"{a} against {b}: fewer than two {unit} to compare", False
    ups, downs = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    if resolved(ci):
        word, agree = (more, ups) if mean > 0 else (less, downs)
        return (f"{a} is {fmt(abs(mean), digits)} ± {fmt(half, digits)}{units} {word} {b} in "
                f"{seeds(agree, n, unit)}"), True
    sign, agree = ("negative", downs) if mean < 0 else ("positive", ups)
    return (f"{a} is within noise of {b} ({fmt(mean, digits)} ± {fmt(half, digits)}{units}; {sign} in "
            f"{seeds(agree, n, unit)})"), False


def apart(a, b):
    """Two estimates' intervals (low, high): 1 when a lies wholly above b, -1 wholly below, 0 when they overlap or
    either is undefined. Only a non-zero answer lets the text order them."""
    if any(math.isnan(v) for v in (*a, *b)):
        return 0
    return 1 if a[0] > b[1] else -1 if a[1] < b[0] else 0


def inside(value, interval):
    low, high = interval
    return low <= value <= high


def ranked(scores, lower_is_better=True):
    """{name: score} -> 'a (x), b (y) and c (z), best to worst' from the numbers themselves."""
    order = sorted(scores, key=lambda k: scores[k] if lower_is_better else -scores[k])
    return listing(f"{k} ({fmt(scores[k])})" for k in order) + ", best to worst"


def wrap(paragraph):
    """A generated paragraph as README lines; a '- ' line is a bullet, continued two spaces in."""
    lines = []
    for line in paragraph.split("\n"):
        indent = "  " if line.startswith("- ") else ""
        lines += textwrap.wrap(line, 115, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


# ---------------------------------------------------------------- tables, text and README blocks

def markdown(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


class Report:
    """One regeneration: the loaded results, and what the sections write: tables, text blocks, figures, and the
    findings that the summary sorts into resolved and not resolved."""

    def __init__(self, results_dir, out_dir):
        self.results_dir, self.out = Path(results_dir), Path(out_dir)
        self.loaded = load_results(results_dir)
        self.blocks = {}  # "table:NAME" or "text:NAME" -> the README block
        self.findings = []  # (resolved, sentence, section)
        self.cache = {}  # what several sections use, computed once (steps_analysis)

    def rows(self, *sweeps):
        return [r for s in sweeps for r in self.loaded.get(s, ([], []))[0]]

    def history(self, *sweeps):
        return [h for s in sweeps for h in self.loaded.get(s, ([], []))[1]]

    def table(self, name, head, rows):
        """tables/<name>.csv and .md, the same cells, and the README block."""
        (self.out / "tables").mkdir(parents=True, exist_ok=True)
        with open(self.out / "tables" / f"{name}.csv", "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([head] + rows)
        (self.out / "tables" / f"{name}.md").write_text(markdown(head, rows))
        self.blocks[f"table:{name}"] = markdown(head, rows)

    def text(self, name, *paragraphs):
        self.blocks[f"text:{name}"] = "\n\n".join(wrap(p) for p in paragraphs if p) + "\n"

    def finding(self, section, sentence, is_resolved):
        self.findings.append((is_resolved, sentence, section))

    def save(self, fig, name):
        save(fig, self.out / "figures" / f"{name}.png")


def update_readme(path, blocks):
    """Rewrite each <!-- table:NAME --> and <!-- text:NAME --> block of README.md; the prose around them stays."""
    text = path.read_text()
    for kind, name in re.findall(r"<!-- (table|text):([\w-]+) -->", text):
        body = blocks.get(f"{kind}:{name}", f"_No results yet for `{name}`._\n")
        pattern = re.compile(rf"(<!-- {kind}:{name} -->\n).*?(<!-- /{kind}:{name} -->)", re.DOTALL)
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), text)
    path.write_text(text)


# ---------------------------------------------------------------- figures: every mark is also a row of data

def new_figure(nrows=1, ncols=1, size=(6, 4)):
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    fig.drawn = []  # figures/<name>.csv: [panel, series, x, y, low, high], what the figure test compares
    return fig, list(axes.flat)


def drawn_cell(value):
    """A value drawn, as a CSV cell: '' for missing, 'nan' for NaN, 6 significant digits for a number."""
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def record(ax, series, x, y, low=None, high=None):
    ax.figure.drawn.append([ax.figure.axes.index(ax), series, *map(drawn_cell, (x, y, low, high))])


def once(ax, label):
    """A legend label the first time an axes gets it, None after: one legend entry for each kind of mark."""
    seen = ax.__dict__.setdefault("labelled", set())
    if label is None or label in seen:
        return None
    seen.add(label)
    return label


def jitter(x, i, count, spread=0.06, log=True):
    """Seed i of count drawn beside x (a factor on a log axis), so per-seed points do not hide each other."""
    offset = spread * (i - (count - 1) / 2)
    return x * 2 ** offset if log else x + offset


def off_scale(ax, x, value, color, series, meaning, keep=True):
    """A NaN or infinite value: a marker on the axes' top edge, with a legend entry saying what it means; never a
    point at a made-up value."""
    kind = "NaN" if math.isnan(value) else "∞"
    ax.plot([x], [1], marker="X" if kind == "NaN" else "^", ms=7, ls="none", color=color, clip_on=False,
            transform=ax.get_xaxis_transform(), label=once(ax, f"{meaning} ({kind}, at the top edge)"))
    if keep:
        record(ax, series, x, value)


def seeds_ci(ax, x, ys, color, series, label=None, log=False, log_x=True, spread=0.06, meaning="no value",
             interval=True, who="each seed", at=None):
    """Each seed's value beside x (a NaN or infinite one on the top edge) and, with interval, when all are finite,
    their mean (geometric on a log axis) with its 95% t interval; drawn at `at` (default x: a group set beside
    others), recorded at x. -> the mean, NaN when there is none."""
    ys = sorted(ys, key=lambda y: (not is_number(y), y if is_number(y) else 0))
    at = x if at is None else at
    points = [(jitter(at, i, len(ys), spread, log_x), y) for i, y in enumerate(ys)]
    finite = [(px, y) for px, y in points if is_number(y)]
    if finite:
        ax.scatter(*zip(*finite, strict=True), s=12, color=color, alpha=0.6, label=once(ax, who))
    for px, y in points:
        record(ax, series, x, y)
        if not is_number(y):
            off_scale(ax, px, y, color, series, meaning, keep=False)
    if not interval or not ys or len(finite) < len(ys):
        return math.nan
    centre, low, high = bounds(ys, log)
    ax.errorbar([at], [centre], yerr=[[centre - low], [high - centre]], fmt="o", ms=4, color=color, capsize=2,
                elinewidth=1, label=label)
    record(ax, f"{series}: mean, 95% interval", x, centre, low, high)
    return centre


def seed_curves(ax, curves, color, series, label=None, log=False):
    """One thin line per seed, each point marked (a run with one point still shows), and the mean's 95% band
    (geometric on a log axis) where at least two seeds have a value."""
    for i, points in enumerate(curves):
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", ms=3, lw=0.8, color=color, alpha=0.6,
                    label=label if i == 0 else None)
        for x, y in points:
            record(ax, series, x, y)
    at = {}
    for points in curves:
        for x, y in points:
            at.setdefault(x, []).append(y)
    band = [(x, *bounds(ys, log)) for x, ys in sorted(at.items()) if len(ys) >= 2]
    band = [b for b in band if math.isfinite(b[1])]
    if band:
        xs, centres, lows, highs = zip(*band, strict=True)
        ax.fill_between(xs, lows, highs, color=color, alpha=0.15, lw=0, label=once(ax, "95% interval of the mean"))
        for x, c, lo, hi in band:
            record(ax, f"{series}: mean, 95% interval", x, c, lo, hi)


def line(ax, xs, ys, style, series, **kw):
    """A reference or fitted line, recorded like the points."""
    ax.plot(xs, ys, style, label=series, **kw)
    for x, y in zip(xs, ys, strict=True):
        record(ax, series, x, y)


def y_scale(ax, ys=None):
    """A log y axis where the values (default: those drawn on it) span a decade or more, else linear."""
    if ys is None:
        panel = ax.figure.axes.index(ax)
        ys = [float(row[3]) for row in ax.figure.drawn if row[0] == panel and row[3] not in ("", "inf", "nan")]
    if spans(ys, AXIS_SPAN):
        ax.set_yscale("log")


def batch_axis(ax, batches):
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [fmt_key(b) for b in batches])
    ax.minorticks_off()


def lr_axis(ax, lrs):
    """A log lr axis ticked at the grid's own values, slanted so that neighbours do not overlap."""
    ax.set_xscale("log")
    ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs], rotation=45, fontsize=7)
    ax.minorticks_off()


def legend(ax, **kw):
    """The axes' legend, when it has labelled marks."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def legend_below(fig, ax, ncol=4):
    """The legend of ax under the figure's panels, where it hides no data."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.bottom = (math.ceil(len(labels) / ncol) * 11 + 6) / (72 * fig.get_figheight())  # rows of 11 points


class PlainLog(LogFormatter):
    """Log-axis labels written 200, 0.05 rather than 2×10², 5e-02; the ticks labelled are matplotlib's choice."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def log_y(ax):
    """A log y axis labelled 200, 300, 0.05 (minor ticks labelled only where it spans few decades), where the
    panel has drawn a positive finite value; linear where it has none (every run missed: only top-edge marks)."""
    panel = ax.figure.axes.index(ax)
    if any(float(row[3]) > 0 for row in ax.figure.drawn if row[0] == panel and row[3] not in ("", "inf", "nan")):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(PlainLog(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(PlainLog(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def save(fig, path):
    """figures/<name>.png and figures/<name>.csv: every panel's labels and every value drawn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = [[i, part, text, "", "", ""] for i, ax in enumerate(fig.axes) for part, text in (
        ("title", ax.get_title()), ("x label", ax.get_xlabel()), ("y label", ax.get_ylabel()),
        ("y scale", ax.get_yscale()))]
    fig.tight_layout(rect=(0, getattr(fig, "bottom", 0), 1, 1))
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: same data, same bytes here
    plt.close(fig)
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([["panel", "series", "x", "y", "low", "high"], *labels,
                                                      *fig.drawn])


def estimate(ax, x, value, interval, color, series, label=None):
    """A pooled or fitted value with its interval; an infinite value or bound reaches the top edge as an arrow or
    marker, never a made-up finite point."""
    low, high = interval
    record(ax, series, x, value, low, high)
    if not is_number(value):
        off_scale(ax, x, value, color, series, "unbounded estimate", keep=False)
    else:
        below = value - low if is_number(low) else 0
        above = high - value if is_number(high) else 0
        ax.errorbar([x], [value], yerr=[[below], [above]], fmt="s", ms=5, color=color, capsize=3, label=label)
    if is_number(low) and not is_number(high):
        ax.annotate("", xy=(x, 1), xycoords=ax.get_xaxis_transform(), xytext=(x, low if not is_number(value)
                    else value), textcoords="data", arrowprops={"arrowstyle": "->", "color": color})
        ax.plot([], [], marker="$\\uparrow$", ls="none", color=color,
                label=once(ax, "interval unbounded above (arrow to the top edge)"))


# ---------------------------------------------------------------- setup, how to read, provenance

def section_setup(rep):
    rows = [r for rs, _ in rep.loaded.values() for r in rs]
    head = ["sweep", "runs", "statuses", *PROVENANCE]
    table = []
    for sweep, (rs, _) in sorted(rep.loaded.items()):
        statuses = {}
        for r in rs:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        table.append([sweep, str(len(rs)), ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))]
                     + [", ".join(sorted({fmt_key(r.get(k)) for r in rs})) for k in PROVENANCE])
    rep.table("provenance", head, table)
    rep.text("rules", (
        "**How to read the tables.** A cell is *mean ± half-width of the 95% Student-t interval (n = runs "
        f"averaged)*. Where the values span more than a factor of {SPAN}, their mean would be the largest one's, so "
        "the cell gives *median [lowest, highest] (n)* instead. A paired difference takes the per-seed differences "
        "(same seed: same initial weights, data split and batch order) and gives their mean and 95% interval. "
        f"Fitted quantities give a 95% percentile interval from {BOOTSTRAP:,} bootstrap resamples of the seeds in "
        f"each cell ({BOOTSTRAP // 4:,} in 4c)."), (
        "**How to read the text.** Its numbers and comparison words are written by `lab1/report.py` from the "
        "results, by fixed rules: a difference gets a direction (*above*, *below*, *faster*) only when its 95% "
        "interval excludes 0, and is otherwise *within noise*; *all seeds* only when every seed's difference has "
        "the sign stated, else *k of n seeds*; two estimates with intervals are ordered only when the intervals do "
        "not overlap; *best* and *worst* are ranks of the numbers beside them."))
    if not rows:
        return
    groups = {}
    for sweep, (rs, _) in sorted(rep.loaded.items()):
        sizes = tuple(only(rs, k) for k in ("dataset", "img_size", "num_classes", "train_size", "val_size",
                                            "test_size"))
        groups.setdefault(sizes, []).append(sweep)
    (data, img, classes, *split), *others = sorted(groups, key=lambda g: -len(groups[g]))
    rep.text("setup", "\n".join([
        f"- **Machine:** {listing(f'`{d}`' for d in distinct(rows, 'device'))}, as train.py records it "
        "(`device`). One run at a time (sweeps one after another). Memory is the memory that batch size scales, "
        "`memory/activations_mb` "
        "(what the first training step saves for backward), and the process's peak resident memory "
        "`memory/peak_mb`.",
        f"- **Data:** `{data}` at {img}×{img} pixels, {classes} classes, split by train.py stratified by class and "
        f"fixed by `--seed`: {num(split[0])} train / {num(split[1])} validation / {num(split[2])} test"
        + "".join(f"; {' / '.join(num(n) for n in g[3:])} in {listing(f'`{s}`' for s in groups[g])} (`--train_samples`)"
                  for g in others) + ".",
        f"- **Model and training:** timm's {listing(f'`{m}`' for m in distinct(rows, 'model'))} from scratch, no "
        "augmentation, the training loader dropping its last partial batch. Set once for every sweep in "
        "`lab1/train_defaults.yaml`."]))
    commits = {}
    for sweep, (rs, _) in sorted(rep.loaded.items()):
        commits.setdefault(", ".join(f"`{fmt_key(c)[:7]}`" for c in distinct(rs, "git_commit")), []).append(sweep)
    order = sorted(commits, key=lambda c: -len(commits[c]))
    clean = all(r.get("git_dirty") is False for r in rows)
    rep.text("code", (
        "- **Code and software:** every run comes from "
        f"{'a clean checkout (`git_dirty` False)' if clean else 'a checkout'} of the commit and versions below, "
        "with `python sweep.py sweeps/<file>`; each run also went to W&B "
        f"offline. {len(commits[order[0]])} of the {len(rep.loaded)} sweeps come from {order[0]}"
        + "".join(f"; {listing(f'`{s}`' for s in commits[c])} from {c}" for c in order[1:]) + "."
        + replayed(rep)))


def replayed(rep):
    """What lab1/replay.py found: did the newest sweeps' train.py train the older sweeps' runs the same?"""
    rows = runfiles.read_results(rep.results_dir / REPLAY)
    if not rows:
        return ""
    runs = {(r["sweep"], r["run_id"]): [] for r in rows}
    for r in rows:
        runs[(r["sweep"], r["run_id"])].append(r["same"] is True)
    same = sum(all(v) for v in runs.values())
    at = listing(f"`{fmt_key(c)[:7]}`" for c in distinct(rows, "replayed_at"))
    return (f" train.py changed between these commits (new instruments, a streaming data path), so the cheapest "
            f"run of each of the {num(len(runs))} older sweeps was run again with {at}'s train.py "
            f"(`python lab1/replay.py`): {num(same)} of {num(len(runs))} gave the same losses, accuracies and "
            "update counts, bit for bit, as the committed run"
            + ("" if same == len(runs) else f" ({listing(sorted(s for s, _ in runs if not all(runs[s, _])))} did not)")
            + ".")


# ---------------------------------------------------------------- Q1: batch size

EVALUATIONS = ("running BN", "precise BN", "GroupNorm")


def evaluation_runs(rep):
    """Evaluation mode -> the runs of lab1_batch_size (BN, both evaluations) and lab1_groupnorm."""
    rows = rep.rows("lab1_batch_size")
    return {"running BN": where(rows, precise_bn=False), "precise BN": where(rows, precise_bn=True),
            "GroupNorm": rep.rows("lab1_groupnorm")}


def at(rows, b, metric="test/acc"):
    """{seed: metric} of the completed runs at global batch b."""
    return by_seed(where(rows, **{B: b}), metric)


def mean_of(seeds_values, digits=3):
    return fmt_ci(mean_ci(seeds_values.values()), digits, n=False)


def section_bn_diagnosis(rep):
    runs = evaluation_runs(rep)
    batches = distinct([r for rs in runs.values() for r in rs], B)
    if not batches:
        return
    small, big = batches[0], batches[-1]
    head = [B, *[f"test/acc, {e}" for e in EVALUATIONS], "precise − running (paired)"]
    rep.table("bn_diagnosis", head, [[fmt_key(b), *[fmt_ci(mean_ci(at(runs[e], b).values())) for e in EVALUATIONS],
                                      fmt_ci(paired(at(runs["precise BN"], b), at(runs["running BN"], b)))]
                                     for b in batches])
    rep.table("batch_effect", ["evaluation", *[f"{fmt_key(b)} − {fmt_key(small)}" for b in batches[1:]]],
              [[e, *[fmt_ci(paired(at(runs[e], b), at(runs[e], small))) for b in batches[1:]]] for e in EVALUATIONS])
    rows = rep.rows("lab1_batch_size")
    figure_accuracy_by_batch(rep, "bn_diagnosis", runs, batches, 0, "test accuracy",
                             design(rows, "epochs", "optimizer", "lr", "seed"))

    rep.text("bn_design", (
        f"`lab1_batch_size` trains batch {numbers(batches)} "
        f"({design(rows, 'epochs', 'optimizer', 'lr', 'scheduler', 'seed')}), each run twice: evaluated with the "
        "running statistics and with precise BN."))
    updates = {b: only(where(runs["precise BN"], **{B: b}), "update") for b in batches}
    gains = {b: diff(at(runs["precise BN"], b), at(runs["running BN"], b)) for b in batches}
    gain, ok = compare(f"at batch {num(big)}, precise BN", "running statistics", gains[big])
    rep.finding("1a", gain, ok)
    others = "; ".join(f"at batch {num(b)} ({num(updates[b])} updates) "
                       + compare("precise BN", "running statistics", gains[b])[0] for b in batches[:-1])
    gap_running = mean_ci(diff(at(runs["running BN"], big), at(runs["running BN"], small)).values())[0]
    gap_precise = mean_ci(diff(at(runs["precise BN"], big), at(runs["precise BN"], small)).values())[0]
    fair = [compare(f"batch {num(b)}", f"batch {num(small)}", diff(at(runs["precise BN"], b),
                                                                   at(runs["precise BN"], small))) for b in batches[1:]]
    rep.finding("1a", f"With precise BN, {fair[-1][0]}", fair[-1][1])
    group_norm = compare(f"batch {num(big)}", f"batch {num(small)}", diff(at(runs["GroupNorm"], big),
                                                                           at(runs["GroupNorm"], small)))[0]
    rep.text("bn_answer", (
        f"At batch {num(big)} ({num(updates[big])} updates in {num(only(rows, 'epochs'))} epochs) the running "
        f"statistics are averages over only {num(updates[big])} batches: evaluated with them the model scores "
        f"{mean_of(at(runs['running BN'], big))}, and with statistics recomputed on the training data the same "
        f"weights score {mean_of(at(runs['precise BN'], big))}; {gain}. {others[0].upper()}{others[1:]}."), (
        f"Of the gap between batch {num(big)} and batch {num(small)} with running statistics "
        f"({fmt(gap_running)}), precise BN leaves {fmt(gap_precise)}, {pct(gap_precise / gap_running)} of it. "
        f"Once evaluation is fair, {listing(s for s, _ in fair)}. Without batch norm (GroupNorm, at the same lr, "
        f"not tuned for it) batch {num(big)} scores {mean_of(at(runs['GroupNorm'], big))} against "
        f"{mean_of(at(runs['GroupNorm'], small))} at batch {num(small)}: {group_norm}."))


def figure_accuracy_by_batch(rep, name, groups, batches, bottom, ylabel, title):
    """Test accuracy against batch size for each group of runs ({label: runs}): each seed, and the mean with its
    95% interval, joined across batch sizes."""
    fig, (ax,) = new_figure()
    for g, ((label, runs), color) in enumerate(zip(groups.items(), ("tab:red", "tab:blue", "tab:green"),
                                                  strict=False)):
        xs = [jitter(b, g, len(groups), 0.25) for b in batches]  # each group beside the others
        means = [seeds_ci(ax, b, values(runs(b) if callable(runs) else where(runs, **{B: b}), "test/acc"), color,
                          label, spread=0.04, at=x) for b, x in zip(batches, xs, strict=True)]
        ax.plot(xs, means, color=color, lw=1, label=f"{label}: mean, 95% interval")
    batch_axis(ax, batches)
    ax.set_ylim(bottom, 1.02)
    ax.set(xlabel="batch size (images)", ylabel=ylabel, title=title)
    ax.title.set_fontsize(9)
    legend(ax, fontsize=7, loc="lower left")
    rep.save(fig, name)


TIME_METRICS = (("time/train_s", "s", 2), ("throughput/train_img_s", "img/s", 0),
                ("memory/activations_mb", "MB", 2), ("memory/peak_mb", "MB", 0))


def per_update(rows):
    """{seed: seconds of training per update}: comparable across batch sizes, as a whole epoch's time is not (the
    last partial batch is dropped, so an epoch trains a different number of images)."""
    return {r["seed"]: r["time/train_s"] / r["update"] for r in completed(rows) if is_number(r.get("time/train_s"))}


def section_batch_time(rep):
    rows = completed(rep.rows("lab1_batch_time"))
    batches = distinct(rows, B)
    if not batches:
        return
    small, big = batches[0], batches[-1]
    head = [B, "updates", "images trained", "time per update (s)",
            *[f"{m} ({u})" for m, u, _ in TIME_METRICS]]
    table = []
    for b in batches:
        group = where(rows, **{B: b})
        table.append([fmt_key(b), fmt_key(only(group, "update")), fmt_key(only(group, "examples")),
                      fmt_ci(mean_ci(per_update(group).values()), 3)]
                     + [fmt_ci(mean_ci(values(group, m)), d) for m, _, d in TIME_METRICS])
    rep.table("batch_time", head, table)

    # Activation memory is linear in the batch by construction: a least-squares line through every run
    xs, ys = [r[B] for r in rows], [r["memory/activations_mb"] for r in rows]
    fit = stats.linregress(xs, ys)
    relative = max(abs(y - fit.intercept - fit.slope * x) / y for x, y in zip(xs, ys, strict=True))
    throughput = {b: at(rows, b, "throughput/train_img_s") for b in batches}
    ratio = np.mean(list(throughput[big].values())) / np.mean(list(throughput[small].values()))
    rep.table("memory_fit", ["quantity", "value"], [
        ["activations per image (MB), least squares", fmt(fit.slope, 4)], ["intercept (MB)", fmt(fit.intercept, 3)],
        ["largest relative residual", f"{relative:.1e}"], ["R²", fmt(fit.rvalue ** 2, 6)],
        [f"throughput ratio, batch {fmt_key(big)} / batch {fmt_key(small)}", fmt(ratio, 2)]])
    figure_batch_time(rep, rows, batches)
    text_batch_time(rep, rows, batches, fit, relative)


def figure_batch_time(rep, rows, batches):
    fig, axes = new_figure(1, 3, (13, 3.8))
    panels = [(per_update, "time per update (s)", "training time per update"),
              (lambda g: by_seed(g, "throughput/train_img_s"), "throughput/train_img_s (img/s)",
               "training throughput"),
              (lambda g: by_seed(g, "memory/peak_mb"), "memory (MB)", "peak resident memory (memory/peak_mb)")]
    for ax, (get, ylabel, title) in zip(axes, panels, strict=True):
        means = [seeds_ci(ax, b, get(where(rows, **{B: b})).values(), "tab:blue", title, who="each repeat")
                 for b in batches]
        ax.plot(batches, means, color="tab:blue", lw=1, label="mean, 95% interval")
        ax.set(xlabel="batch size (images)", ylabel=ylabel, title=title)
        batch_axis(ax, batches)
        y_scale(ax)
    activations = [np.mean(values(where(rows, **{B: b}), "memory/activations_mb")) for b in batches]
    line(axes[2], batches, activations, "k--", "memory/activations_mb (saved for backward)")
    y_scale(axes[2])
    for ax in axes:
        legend(ax, fontsize=7)
    fig.suptitle(f"{design(rows, 'epochs')} on {listing(distinct(rows, 'device'))}; each repeat, and the mean "
                 f"with its 95% interval (n={len(rows) // len(batches)} each)", fontsize=9)
    rep.save(fig, "batch_time")


def text_batch_time(rep, rows, batches, fit, relative):
    small, big = batches[0], batches[-1]
    throughput = {b: at(rows, b, "throughput/train_img_s") for b in batches}
    ratio = np.mean(list(throughput[big].values())) / np.mean(list(throughput[small].values()))
    examples = {b: only(where(rows, **{B: b}), "examples") for b in batches}
    rep.text("batch_time_design", (
        f"`lab1_batch_time`: {design(rows, B, 'epochs', 'optimizer', 'lr')}, {len(distinct(rows, 'seed'))} "
        "repeats each; timing noise on a shared machine is the spread of the repeats. `time/train_s` counts the "
        f"training steps only (not evaluation or start-up). An epoch at batch {num(big)} trains "
        f"{num(examples[big])} images and at batch {num(small)} {num(examples[small])} (the last partial batch is "
        "dropped), so the figure compares time per update and images per second, not time per epoch."))
    steps = [(a, b, compare("", "", diff(throughput[b], throughput[a]), unit="repeats")) for a, b in
             zip(batches, batches[1:], strict=False)]
    rises = [f"{num(a)} to {num(b)}" for a, b, (_, ok) in steps if ok and np.mean(
        list(diff(throughput[b], throughput[a]).values())) > 0]
    flat = [f"{num(a)} to {num(b)}" for a, b, (_, ok) in steps if not ok]
    overall, ok = compare(f"throughput at batch {num(big)}", f"batch {num(small)}",
                          diff(throughput[big], throughput[small]), digits=0, unit="repeats", units=" img/s")
    rep.finding("1b", overall, ok)
    update_time = {b: per_update(where(rows, **{B: b})) for b in batches}
    cost = np.mean(list(update_time[big].values())) / np.mean(list(update_time[small].values()))
    peak = {b: at(rows, b, "memory/peak_mb") for b in batches}
    share = np.mean(values(where(rows, **{B: small}), "memory/activations_mb")) / np.mean(list(peak[small].values()))
    rep.text("batch_time_answer", (
        f"Throughput is {mean_of(throughput[small], 0)} img/s at batch {num(small)} and "
        f"{mean_of(throughput[big], 0)} at batch {num(big)}, {fmt(ratio, 2)} times as many; {overall}. Between "
        f"neighbouring batch sizes (paired by repeat) it rises from {listing(rises) or 'none'}, and the steps from "
        f"{listing(flat) or 'none'} are within noise. A {num(big / small)} times larger batch costs "
        f"{fmt(cost, 1)} times the time per update ({mean_of(update_time[big])} s against "
        f"{mean_of(update_time[small])} s): the per-update overheads (Python, optimizer step, kernel launches) are "
        "spread over more images."), (
        f"The memory that batch size scales is the activations saved for backward: {fmt(fit.slope, 3)} MB per "
        "image, linear by construction (the same network saves the same tensors per image; largest relative "
        f"residual of a least-squares line {relative:.1e}). The process's peak resident memory is "
        f"{mean_of(peak[small], 0)} MB at batch {num(small)}, of which the activations are {pct(share)}, and "
        f"{mean_of(peak[big], 0)} MB at batch {num(big)}: "
        + compare(f"batch {num(big)}", f"batch {num(small)}", diff(peak[big], peak[small]), digits=0,
                  unit="repeats", units=" MB")[0] + ". These runs were started warm by sweep.py (each a fork of a "
        "process that had imported the libraries) when train.py recorded a CPU run's peak resident memory: a fork "
        "counts only the library pages it touches, so these peaks are below those of the same runs started by hand. "
        "train.py now records peak resident memory less file-mapped pages, which is the same either way "
        "(INTERFACE.md). They also predate `--keep_freed_memory`, on by default for CPU runs since: with it, a CPU "
        "run's peak also counts the freed blocks malloc keeps for the next update."))


def tuned_lr_runs(rep):
    """Per batch size, the lr with the best mean val/acc_final over lab1_batch_lr's seeds, among lab1_batch_lr's
    lrs and lab1_batch_size's precise-BN runs of those seeds. -> {batch: (lr, runs, the lrs tried)}."""
    grid = rep.rows("lab1_batch_lr")
    tuning_seeds = set(distinct(grid, "seed"))
    candidates = grid + [r for r in evaluation_runs(rep)["precise BN"] if r["seed"] in tuning_seeds]
    tuned = {}
    for b in distinct(candidates, B):
        lrs = distinct(where(candidates, **{B: b}), "lr")
        score = {lr: np.mean(values(where(candidates, **{B: b, "lr": lr}), "val/acc_final") or [-1]) for lr in lrs}
        best = max(lrs, key=lambda lr: (score[lr], -lr))  # a tie: the smaller lr
        tuned[b] = (best, where(candidates, **{B: b, "lr": best}), lrs)
    return tuned


def section_generalisation(rep):
    epochs = evaluation_runs(rep)["precise BN"]
    updates = rep.rows("lab1_equal_updates")
    tuned = tuned_lr_runs(rep)
    batches = sorted(set(distinct(epochs + updates, B)) | tuned.keys())
    if len(batches) < 2:
        return
    small, big = batches[0], batches[-1]
    tuning = rep.rows("lab1_batch_lr")
    ways = {f"equal epochs ({numbers(distinct(epochs, 'epochs'))})": lambda b: where(epochs, **{B: b}),
            f"equal updates ({numbers(distinct(updates, 'max_updates'))})": lambda b: where(updates, **{B: b}),
            f"lr tuned on val ({numbers(distinct(tuning, 'epochs'))} epochs)": lambda b: tuned.get(b, (0, []))[1]}
    head = [B, *[f"test/acc, {w}" for w in ways], "tuned lr"]
    rows = [[fmt_key(b), *[fmt_ci(mean_ci(values(runs(b), "test/acc"))) for runs in ways.values()],
             fmt_key(tuned[b][0]) if b in tuned else "n/a"] for b in batches]
    gaps = {w: diff(by_seed(runs(big), "test/acc"), by_seed(runs(small), "test/acc")) for w, runs in ways.items()}
    rows.append([f"{fmt_key(big)} − {fmt_key(small)}, paired", *[fmt_ci(mean_ci(g.values())) for g in gaps.values()],
                 ""])
    rep.table("generalisation", head, rows)
    figure_accuracy_by_batch(rep, "generalisation", ways, batches, 0.8, "test accuracy (axis from 0.8)",
                             "precise BN; each seed, and the mean with its 95% interval")

    rep.text("generalisation_design", (
        f"At equal epochs ({numbers(distinct(epochs, 'epochs'))}; `lab1_batch_size`'s precise-BN runs), at equal "
        f"updates ({numbers(distinct(updates, 'max_updates'))}; `lab1_equal_updates`, after Hoffer et al. 2017) "
        "and with the lr tuned per batch size on validation accuracy (`lab1_batch_lr`: "
        f"{design(tuning, 'lr', 'epochs')}, seeds {numbers(distinct(tuning, 'seed'))}, with `lab1_batch_size`'s "
        f"lr {numbers(distinct(epochs, 'lr'))} for the same seeds; the lr with the best mean `val/acc_final` is "
        "kept). All with precise BN."))
    claims = {w: compare(f"batch {num(big)}", f"batch {num(small)}", g) for w, g in gaps.items()}
    for w, (sentence, ok) in claims.items():
        rep.finding("1c", f"{'With the' if w.startswith('lr') else 'At'} {w.split(' (')[0]}, {sentence}", ok)
    (at_epochs, ok_e), (at_updates, ok_u), (at_tuned, _) = claims.values()
    signs = {np.sign(np.mean(list(g.values()))) for g in list(gaps.values())[:2]}
    test_size = only(epochs, "test_size")
    lost = sorted({round(-d * test_size) for d in list(gaps.values())[0].values()})
    seen = one(where(updates, **{B: big}), "examples") / one(where(updates, **{B: small}), "examples")
    best, _, grid = tuned[big]
    edge = (f"; batch {num(big)}'s tuned lr is the top of its grid, so tuning may give more there"
            if best == max(grid) and len(grid) > 1 else "")
    rep.text("generalisation_answer", (
        ("Whether a large batch \"generalises worse\" depends on what is held equal, as Shallue et al. (2019) and "
         "Hoffer et al. (2017) report. " if ok_e and ok_u and len(signs) == 2 else "")
        + f"At equal epochs {at_epochs} (per seed, {listing((num(n) for n in lost), 'or')} fewer of the "
        f"{num(test_size)} test images right). At equal updates, where batch {num(big)} sees {fmt(seen, 0)} times "
        "the images of "
        f"batch {num(small)}, {at_updates}. With the lr tuned per batch size (lr "
        f"{listing(num(tuned[b][0]) for b in batches)} at batch {numbers(batches)}), {at_tuned}{edge}."))


# ---------------------------------------------------------------- Q1: the large-batch gap, done properly

# its alphas before there is a CSV (--points, --alpha_min, --alpha_max): steps of 0.25, so 0 and 1 among them and
# three between; 4.7 minutes for 8 pairs on the 2 cores, beside an accuracy sweep (lab1_memorisation)
LINE_ALPHAS = (9, -0.5, 1.5)
GAP_ROLES = ("small", "plain", "ghost")  # 1e's three ways to train: batch 16; batch 256; batch 256, ghost BN


def grid_best(rows, metric="val/acc_final"):
    """-> (the lr of a grid with the best mean metric over its completed runs (a tie: the smaller lr), edge):
    edge is "lowest" or "highest" when that lr is an end of the lrs tried, so that the grid does not bracket the
    optimum, else None. (None, None) when no run has the metric."""
    scores = {lr: np.mean(values(where(rows, lr=lr), metric)) for lr in distinct(rows, "lr")
              if values(where(rows, lr=lr), metric)}
    if not scores:
        return None, None
    best = max(scores, key=lambda lr: (scores[lr], -lr))
    grid = distinct(rows, "lr")
    return best, "lowest" if best == grid[0] else "highest" if best == grid[-1] else None


def ratio_ci(ratios):
    """{seed: a / b} -> (geometric mean, low, high, n): the 95% t interval of the mean log ratio, back in ratios.
    Sharpness spans factors, so its paired comparison is a ratio, averaged in log space; non-positive ratios are
    left out (a log needs a positive value)."""
    logs = [math.log(r) for r in ratios.values() if is_number(r) and r > 0]
    mean, half, n = mean_ci(logs)
    if mean is None:
        return math.nan, math.nan, math.nan, 0
    half = math.nan if half is None else half
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half), n


def fmt_ratio(ratios):
    centre, low, high, n = ratio_ci(ratios)
    return f"{fmt_interval(centre, low, high)} (n={n})"


def compare_ratio(a, b, ratios, unit="seeds"):
    """{seed: a / b} -> ('a is 2.10 [1.60, 2.76] times b, above 1 in all 8 seeds', True) when the interval of the
    geometric mean excludes 1 (`resolved` in log space), else ('a is within noise of b (ratio 1.10 [0.80, 1.51];
    above 1 in 5 of 8 seeds)', False)."""
    centre, low, high, n = ratio_ci(ratios)
    if n < 2:
        return f"{a} against {b}: fewer than two {unit} to compare", False
    kept = [r for r in ratios.values() if is_number(r) and r > 0]
    ups, downs = sum(r > 1 for r in kept), sum(r < 1 for r in kept)
    interval = fmt_interval(centre, low, high)
    if low > 1 or high < 1:
        word, agree = ("above", ups) if low > 1 else ("below", downs)
        return f"{a} is {interval} times {b}, {word} 1 in {seeds(agree, n, unit)}", True
    word, agree = ("below", downs) if centre < 1 else ("above", ups)
    return f"{a} is within noise of {b} (ratio {interval}; {word} 1 in {seeds(agree, n, unit)})", False


def barrier(points):
    """[(alpha, loss)] along the line from model A (alpha 0) to model B (1) -> the highest loss strictly between
    them less the higher of the two ends: positive when the loss rises above both ends on the way (a barrier),
    negative when it stays below the higher end. NaN without both ends or a point between them."""
    at = dict(points)
    inner = [loss for alpha, loss in points if 0 < alpha < 1]
    if 0 not in at or 1 not in at or not inner:
        return math.nan
    return max(inner) - max(at[0], at[1])


def monotone(points):
    """[(alpha, loss)] -> whether the loss only rises, or only falls, from alpha 0 to 1."""
    inside_ = [loss for alpha, loss in sorted(points) if 0 <= alpha <= 1]
    steps = [b - a for a, b in zip(inside_, inside_[1:], strict=False)]
    return all(d >= 0 for d in steps) or all(d <= 0 for d in steps)


def read_line(path):
    """lab1/interpolate.py's CSV -> rows, run_a and run_b as text (they are run ids), every other cell a number;
    [] when there is no file."""
    try:
        with open(path, newline="") as f:
            return [{k: v if k in ("run_a", "run_b") else float(v) if v else math.nan for k, v in row.items()}
                    for row in csv.DictReader(f)]
    except FileNotFoundError:
        return []


class Gap(NamedTuple):
    """1e's runs, per role (GAP_ROLES): all of its lr grid, the best lr, whether that lr is the grid's edge, and the
    best lr's runs."""
    runs: dict
    best: dict
    edge: dict
    tuned: dict
    label: dict  # role -> how the text names it


def gap_analysis(rep):
    """lab1_gap_16 and lab1_gap_256 as 1e's three roles (computed once a report); None before both have runs."""
    if "gap" not in rep.cache:
        big = rep.rows("lab1_gap_256")
        runs = {"small": rep.rows("lab1_gap_16"), "plain": [r for r in big if not r.get("ghost_batch_size")],
                "ghost": [r for r in big if r.get("ghost_batch_size")]}
        gap = None
        if all(completed(rs) for rs in runs.values()):
            chosen = {role: grid_best(rs) for role, rs in runs.items()}
            best = {role: lr for role, (lr, _) in chosen.items()}
            ghost = only(runs["ghost"], "ghost_batch_size")
            label = {role: f"batch {num(only(runs[role], B))}" for role in runs}
            label["ghost"] += f" with ghost BN in groups of {num(ghost)}"
            gap = Gap(runs, best, {role: edge for role, (_, edge) in chosen.items()},
                      {role: where(rs, lr=best[role]) for role, rs in runs.items()}, label)
        rep.cache["gap"] = gap
    return rep.cache["gap"]


def edge_words(lr, edge):
    """A best lr as the text gives it: '0.008', or '0.016 (the highest of its grid: not bracketed)'."""
    return num(lr) + (f" (the {edge} of its grid: not bracketed by it)" if edge else "")


def section_gap(rep):
    gap = gap_analysis(rep)
    if gap is None:
        return
    lrs = sorted({lr for rs in gap.runs.values() for lr in distinct(rs, "lr")})
    rep.table("gap_lr", ["lr", *[f"val/acc_final, {gap.label[role]}" for role in GAP_ROLES]], [
        [f"{lr:g}", *[fmt_ci(mean_ci(values(where(gap.runs[role], lr=lr), "val/acc_final")))
                      if where(gap.runs[role], lr=lr) else "not run" for role in GAP_ROLES]] for lr in lrs]
        + [["best", *[edge_words(gap.best[role], gap.edge[role]) for role in GAP_ROLES]]])
    rep.table("gap", ["", "best lr", "updates", "val/acc_final", "test/acc", "sharpness/top_eig (final weights)"], [
        [gap.label[role], f"{gap.best[role]:g}", fmt_key(only(gap.tuned[role], "update")),
         *[fmt_summary(values(gap.tuned[role], m), d) for m, d in (("val/acc_final", 3), ("test/acc", 3),
                                                                   ("sharpness/top_eig", 1))]]
        for role in GAP_ROLES])
    pairs = gap_pairs(gap)
    rep.table("gap_paired", ["paired by seed", "val/acc_final", "test/acc",
                             "sharpness ratio (geometric mean [95% interval])"], [
        [name, *[fmt_ci(paired(by_seed(gap.tuned[a], m), by_seed(gap.tuned[b], m))) for m in ("val/acc_final",
                                                                                              "test/acc")],
         fmt_ratio(sharpness_ratios(gap, a, b))] for name, (a, b) in pairs.items()])
    line = line_pairs(rep, gap)
    table_gap_line(rep, line)
    figure_gap(rep, gap, line, lrs)
    text_gap(rep, gap, line)


def gap_pairs(gap):
    """The paired comparisons of 1e: name -> (role, role it is compared with)."""
    return {f"{gap.label['plain']} − {gap.label['small']}: the gap": ("plain", "small"),
            f"{gap.label['ghost']} − {gap.label['plain']}: batch norm's share": ("ghost", "plain"),
            f"{gap.label['ghost']} − {gap.label['small']}: what ghost BN leaves": ("ghost", "small")}


def sharpness_ratios(gap, a, b):
    """{seed: sharpness of role a's final weights / role b's}, each at its best lr."""
    sa, sb = by_seed(gap.tuned[a], "sharpness/top_eig"), by_seed(gap.tuned[b], "sharpness/top_eig")
    return {s: sa[s] / sb[s] for s in sorted(sa.keys() & sb.keys()) if sb[s]}


class Line(NamedTuple):
    """1e's line: per seed, the (alpha, row) points from its batch-16 model (alpha 0) to its batch-256 one (1)."""
    points: dict  # seed -> [(alpha, row)], alpha ascending
    runs: dict  # seed -> (run A's results row, run B's)
    history: list  # the history rows of every run on a line


def line_pairs(rep, gap):
    rows = read_line(rep.results_dir / LINE)
    ids = {r["run_id"]: r for rs in (gap.runs["small"], gap.runs["plain"]) for r in rs}
    points, runs = {}, {}
    for row in rows:
        a, b = ids.get(row["run_a"]), ids.get(row["run_b"])
        if a is None or b is None or a["seed"] != b["seed"]:
            raise ReportError(f"{LINE} pairs runs {row['run_a']} and {row['run_b']}, which are not one seed's runs "
                              "of lab1_gap_16 and lab1_gap_256: make it again with the command in the README")
        points.setdefault(a["seed"], []).append((row["alpha"], row))
        runs[a["seed"]] = (a, b)
    wanted = {r["run_id"] for pair in runs.values() for r in pair}
    history = [h for h in rep.history("lab1_gap_16", "lab1_gap_256") if h["run_id"] in wanted]
    return Line({s: sorted(p, key=lambda x: x[0]) for s, p in sorted(points.items())}, runs, history)


def line_values(line, metric):
    """{alpha: [each seed's value]} along the line."""
    out = {}
    for points in line.points.values():
        for alpha, row in points:
            out.setdefault(alpha, []).append(row[metric])
    return dict(sorted(out.items()))


def table_gap_line(rep, line):
    metrics = ("train/loss", "val/loss", "val/acc")
    by_alpha = {m: line_values(line, m) for m in metrics}
    rep.table("gap_line", ["alpha", *[f"{m}{' (train labels, eval mode)' if m.startswith('train') else ''}"
                                      for m in metrics]],
              [[fmt_key(alpha), *[fmt_summary(by_alpha[m][alpha], 3) for m in metrics]]
               for alpha in by_alpha["train/loss"]])


def figure_gap(rep, gap, line, lrs):
    fig, axes = new_figure(2, 2, (12, 8))
    colors = dict(zip(GAP_ROLES, ("tab:blue", "tab:red", "tab:green"), strict=True))
    finals = [v for rs in gap.runs.values() for v in values(rs, "val/acc_final")]
    bottom = math.floor(min(finals) * 20) / 20 if finals else 0
    for g, role in enumerate(GAP_ROLES):
        grid = distinct(gap.runs[role], "lr")
        xs = [jitter(lr, g, len(GAP_ROLES), 0.15) for lr in grid]
        means = [seeds_ci(axes[0], lr, values(where(gap.runs[role], lr=lr), "val/acc_final"), colors[role],
                          gap.label[role], spread=0.03, at=x)
                 for lr, x in zip(grid, xs, strict=True)]
        axes[0].plot(xs, means, color=colors[role], lw=1, label=f"{gap.label[role]}: mean, 95% interval")
        seeds_ci(axes[1], g, values(gap.tuned[role], "sharpness/top_eig"), colors[role], gap.label[role],
                 label=once(axes[1], "mean (geometric), 95% interval"), log=True, log_x=False, spread=0.05,
                 meaning="no sharpness", who="each seed")
    legend(axes[0], fontsize=7, loc="lower right")
    lr_axis(axes[0], lrs)
    axes[0].set_ylim(bottom, 1.01)
    axes[0].set(xlabel="lr", ylabel=f"val/acc_final (axis from {bottom:g})",
                title="validation accuracy after the last epoch, by lr")
    axes[1].set_yscale("log")
    axes[1].set_xticks(range(len(GAP_ROLES)), [gap.label[role].replace(" with ", "\n") for role in GAP_ROLES],
                       fontsize=7)
    axes[1].set(ylabel="sharpness/top_eig (final weights)", title="sharpness at each one's best lr")
    for ax, metric in ((axes[2], "train/loss"), (axes[3], "val/loss")):
        curves = [[(alpha, row[metric]) for alpha, row in points] for points in line.points.values()]
        log = spans([y for c in curves for _, y in c], AXIS_SPAN)
        seed_curves(ax, curves, "k", f"line: {metric}", "one line per seed", log=log)
        ax.set_yscale("log" if log else "linear")
        for alpha, role in ((0, "small"), (1, "plain")):
            ax.axvline(alpha, color=colors[role], ls=":", lw=1, label=f"{gap.label[role]}'s model")
        ax.set(xlabel=f"alpha (0: {gap.label['small']}'s model, 1: {gap.label['plain']}'s)", ylabel=metric,
               title=f"{metric} along the line between the two models (n={len(curves)} seeds)")
    for ax in axes:
        ax.title.set_fontsize(9)
    for ax in axes[1:]:
        legend(ax, fontsize=7)
    rep.save(fig, "gap")


def text_gap(rep, gap, line):
    small, plain, ghost = (gap.runs[role] for role in GAP_ROLES)
    size = only(ghost, "ghost_batch_size")
    rep.text("gap_design", (
        f"`lab1_gap_16` trains batch {num(only(small, B))} at lr {said(small, 'lr')}, and `lab1_gap_256` batch "
        f"{num(only(plain, B))} at lr {said(plain, 'lr')}, with plain batch norm and with ghost batch norm in groups "
        f"of {num(size)} (Hoffer et al. 2017: in training each group of {num(size)} images is normalised with its "
        f"own statistics, as at batch {num(only(small, B))}); {design(small + plain, 'optimizer', 'scheduler')}, "
        f"{design(small, 'epochs', 'seed')}, precise BN. Each run measures the sharpness of its final weights, "
        f"`sharpness/top_eig`: the top eigenvalue of the training loss's Hessian on {said(small, 'sharpness_samples')}"
        " fixed training images, in train mode (the ghost runs' in their groups), by power iteration. Each one's "
        "best lr is the one with the best mean `val/acc_final`; one at an end of its grid is marked as not "
        "bracketed."))
    tests = {role: by_seed(gap.tuned[role], "test/acc") for role in GAP_ROLES}
    the_gap, gap_ok = compare(gap.label["plain"], gap.label["small"], diff(tests["plain"], tests["small"]))
    share, share_ok = compare(gap.label["ghost"], f"plain batch norm at {gap.label['plain']}",
                              diff(tests["ghost"], tests["plain"]))
    left, left_ok = compare(gap.label["ghost"], gap.label["small"], diff(tests["ghost"], tests["small"]))
    sharp, sharp_ok = compare_ratio(f"the sharpness of {gap.label['plain']}'s final weights",
                                    f"{gap.label['small']}'s", sharpness_ratios(gap, "plain", "small"))
    gap_mean, share_mean = (np.mean(list(diff(tests[a], tests[b]).values())) for a, b in (("plain", "small"),
                                                                                        ("ghost", "plain")))
    if gap_ok and share_ok and gap_mean < 0 < share_mean:
        share += f", {pct(share_mean / -gap_mean)} of the gap's mean"
    rep.finding("1e", f"With each at its best lr, in test accuracy, {the_gap}", gap_ok)
    rep.finding("1e", f"In test accuracy, {share}", share_ok)
    rep.finding("1e", f"In test accuracy, {left}", left_ok)
    rep.finding("1e", sharp[0].upper() + sharp[1:], sharp_ok)
    edges = [edge_note(rep, gap, role) for role in GAP_ROLES if gap.edge[role]]
    rep.text("gap_answer", (
        "Best lrs (by mean `val/acc_final`): "
        + listing(f"{edge_words(gap.best[r], gap.edge[r])} at {gap.label[r]}" for r in GAP_ROLES)
        + f". At them, in test accuracy, {the_gap}; {share}; {left}. {sharp[0].upper()}{sharp[1:]}"
        + "".join(f". {e[0].upper()}{e[1:]}" for e in edges) + "."))
    sharper = ratio_ci(sharpness_ratios(gap, "plain", "small"))[0]
    verdicts = {"sharper minima": (1 if sharper > 1 else -1) if sharp_ok else 0,
                "batch norm's statistics over more images": direction(share_ok, tests["ghost"], tests["plain"], 1),
                "SGD's noise and the number of updates": direction(left_ok, tests["ghost"], tests["small"], -1)}
    text_gap_line(rep, gap, line, gap_ok, verdicts)


def edge_note(rep, gap, role):
    """A best lr at an end of its grid: the next lr of the grid against it, and 1c's tuning runs at the same batch
    where they reach beyond that end."""
    runs, best, edge = gap.runs[role], gap.best[role], gap.edge[role]
    grid = distinct(runs, "lr")
    text = f"{gap.label[role]}'s best lr is the {edge} of its grid, so a better lr may lie beyond it"
    if len(grid) > 1:
        nearest = grid[1] if edge == "lowest" else grid[-2]
        text += "; in `val/acc_final` " + compare(f"lr {num(nearest)}", f"lr {num(best)}", diff(
            by_seed(where(runs, lr=nearest), "val/acc_final"), by_seed(gap.tuned[role], "val/acc_final")))[0]
    b = only(runs, B)
    if b in tuned_lr_runs(rep):
        chosen, _, lrs = tuned_lr_runs(rep)[b]
        beyond = [lr for lr in lrs if (lr < best if edge == "lowest" else lr > best)]
        if beyond and chosen not in beyond:
            text += (f". 1c's tuning runs at batch {num(b)} reach beyond it (lr {numbers(lrs)}) and found lr "
                     f"{num(chosen)} best, so the two grids together bracket it")
    return text


def direction(ok, a, b, sign):
    """1 when the paired difference a - b is resolved with the sign an explanation predicts, -1 when resolved the
    other way, 0 when within noise."""
    if not ok:
        return 0
    return 1 if np.sign(np.mean(list(diff(a, b).values()))) == sign else -1


def verdict(verdicts):
    """{explanation: 1, -1 or 0 (direction)} -> 'they support a; they go against b; they do not resolve c'."""
    said_ = {v: [name for name, d in verdicts.items() if d == v] for v in (1, -1, 0)}
    return "; ".join(f"they {word} {listing(said_[v])}" for v, word in (
        (1, "support"), (-1, "go against"), (0, "do not resolve")) if said_[v])


def text_gap_line(rep, gap, line, gap_ok, verdicts):
    small, big, ghost = gap.label["small"], gap.label["plain"], gap.label["ghost"]
    rules = (f"The rules: sharper minima are supported when the sharpness of {big}'s final weights is resolved above "
             f"{small}'s (their ratio's interval excludes 1) and the two models' train losses on the line are within "
             "noise of each other (minima of one depth, as Keskar et al. compare them; a model that ends higher on "
             "the loss has not reached a minimum as deep); batch norm's statistics over more images when "
             f"{ghost} is resolved above plain batch norm at {big}; SGD's noise and the number of updates when "
             f"{ghost} (batch norm's statistics as at {small}) is still resolved below {small}, which is what "
             "is left: these runs cannot split the noise from the number of updates. Each in test accuracy, paired "
             "by seed, at each one's best lr.")
    conclusion = (f"{'' if gap_ok else 'With each at its best lr there is no resolved gap to explain. '}By these "
                  f"rules {verdict(verdicts)}.")
    alphas = sorted({alpha for points in line.points.values() for alpha, _ in points})
    best_pairs = gap_line_command(rep, gap, (len(alphas), alphas[0], alphas[-1]) if alphas else LINE_ALPHAS)
    if not line.points:
        rep.text("gap_line_design", f"No line yet: `{LINE}` is not in the results (How to regenerate says how to "
                                    "make it).")
        rep.text("gap_line_answer", rules, conclusion)
        return
    losses = {s: [(alpha, row["train/loss"]) for alpha, row in points] for s, points in line.points.items()}
    barriers = {s: barrier(p) for s, p in losses.items() if is_number(barrier(p))}
    rise, rise_ok = compare("the highest train loss between the two models", "the higher of the two ends",
                            barriers)
    rep.finding("1e", f"On the line from {small}'s model to {big}'s, {rise}", rise_ok)
    basin = {1: "a barrier separates the two solutions on this line",
             -1: "no barrier: the loss between the two solutions stays below the higher end",
             0: "a barrier is not resolved"}[direction(rise_ok, barriers, dict.fromkeys(barriers, 0), 1)]
    ends = {s: dict(p)[1] - dict(p)[0] for s, p in losses.items() if 0 in dict(p) and 1 in dict(p)}
    depth, depth_ok = compare(f"the train loss of {big}'s model", f"{small}'s", ends)
    rep.finding("1e", f"On the line, {depth}", depth_ok)
    shallower = ""
    if depth_ok and verdicts["sharper minima"] == 1:
        verdicts["sharper minima"] = 0  # a sharper point higher on the loss: not a minimum of the same depth
        shallower = (f" {big[0].upper()}{big[1:]}'s final weights are sharper, but its model ends higher on the "
                     f"training loss than {small}'s: a sharper point, not a sharper minimum of the same depth.")
    steady = sum(monotone(p) for p in losses.values())
    conclusion = (f"{'' if gap_ok else 'With each at its best lr there is no resolved gap to explain. '}By these "
                  f"rules {verdict(verdicts)}.{shallower}")
    ids = [r for pair in line.runs.values() for r in pair]
    lowest_last = sum(lowest(curve(line.history, r["run_id"], "val/loss"))[0] == max_epoch(
        [h for h in line.history if h["run_id"] == r["run_id"]]) for r in ids)
    ends = [(row, r) for (a, b), points in zip(line.runs.values(), line.points.values(), strict=True)
            for alpha, row in points for r in ((a,) if alpha == 0 else (b,) if alpha == 1 else ())]
    same = sum(abs(row["val/acc"] - dict(curve(line.history, r["run_id"], "val/acc"))[
        lowest(curve(line.history, r["run_id"], "val/loss"))[0]]) < 1e-6 for row, r in ends)
    a_lr, b_lr = (said([pair[i] for pair in line.runs.values()], "lr") for i in (0, 1))
    stale = {(a["run_id"], b["run_id"]) for a, b in line.runs.values()} != best_pairs
    rep.text("gap_line_design", (
        f"`lab1/interpolate.py` evaluates the weights (1 − α) A + α B from each seed's {small} model A (lr {a_lr}) "
        f"to its {big} model B (lr {b_lr}), for {len(line.points)} seeds at {len(alphas)} values of α from "
        f"{num(alphas[0])} to {num(alphas[-1])}, with batch-norm statistics recomputed on the training split at "
        "each α (as precise BN), and the train loss in evaluation mode on all training images. A and B are the "
        "runs' `model.safetensors`: the weights at their lowest validation loss, which is the last evaluation point "
        f"(the weights whose sharpness is measured) in {lowest_last} of the {len(ids)} runs. At α = 0 and 1 the line "
        f"gives the runs' own validation accuracy at that point in {same} of the {len(ends)} ends."
        + (" These pairs are not each seed's runs at the best lrs above: make the line again with the command in "
           "How to regenerate." if stale else "")))
    rep.text("gap_line_answer", (
        f"Along the line, {rise} (per seed: {listing(f'{v:+.3f}' for v in barriers.values())}): {basin}. From one "
        f"model to the other the train loss changes monotonically in {seeds(steady, len(losses))}. At the ends, "
        f"{depth}."), rules, conclusion)


def gap_line_command(rep, gap, alphas):
    """The README's command that makes LINE: each seed's batch-16 and batch-256 runs at their best lrs, at alphas
    (--points, --alpha_min, --alpha_max). -> the pairs of run ids it names."""
    small, plain = (by_seed_rows(gap.tuned[role]) for role in ("small", "plain"))
    pairs = [(small[s]["run_id"], plain[s]["run_id"]) for s in sorted(small.keys() & plain.keys())]
    a_dir, b_dir = (f"runs/sweeps/{s}" for s in ("lab1_gap_16", "lab1_gap_256"))
    points, low, high = alphas
    rep.text("gap_line_command", "```bash\npython lab1/interpolate.py \\\n" + "".join(
        f"  {a_dir}/{a} {b_dir}/{b} \\\n" for a, b in pairs)
        + f"  --points {points} --alpha_min {num(low)} --alpha_max {num(high)} --out lab1/results/{LINE}\n```")
    return set(pairs)


def by_seed_rows(rows):
    """{seed: row} of the completed runs."""
    return {r["seed"]: r for r in completed(rows)}


# ---------------------------------------------------------------- Q1: GroupNorm with its own lr

GROUPNORM_LR = ("lab1_groupnorm_lr", "lab1_groupnorm_lr_low")  # one grid: the second extends the first downwards


def section_groupnorm_lr(rep):
    grid = rep.rows(*GROUPNORM_LR)
    ran = [f"`{s}`" for s in GROUPNORM_LR if rep.rows(s)]
    files = listing(ran)
    gap = gap_analysis(rep)
    if not grid:
        return
    tuning, kwargs, batches = set(distinct(grid, "seed")), only(grid, "model_kwargs"), distinct(grid, B)
    rows = grid + [r for r in rep.rows("lab1_groupnorm") if r["seed"] in tuning and r[B] in batches
                   and r.get("model_kwargs") == kwargs]
    chosen = {b: grid_best(where(rows, **{B: b})) for b in batches}
    lrs = distinct(rows, "lr")
    rep.table("groupnorm_lr", ["lr", *[f"val/acc_final, GroupNorm, batch {fmt_key(b)}" for b in batches]], [
        [f"{lr:g}", *[fmt_ci(mean_ci(values(where(rows, **{B: b, "lr": lr}), "val/acc_final"))) for b in batches]]
        for lr in lrs] + [["best", *[edge_words(*chosen[b]) for b in batches]]])
    bn = {only(gap.runs[role], B): role for role in ("small", "plain")} if gap else {}
    head = [B, "GroupNorm's best lr", "batch norm's best lr (1e)", "val/acc_final, GroupNorm",
            "val/acc_final, batch norm", "GroupNorm − batch norm (paired), val/acc_final", "same, test/acc"]
    table, claims = [], {}
    for b in batches:
        gn = where(rows, **{B: b, "lr": chosen[b][0]})
        norm = gap.tuned[bn[b]] if b in bn else []
        claims[b] = {m: compare(f"GroupNorm at lr {num(chosen[b][0])}", f"batch norm at lr {num(gap.best[bn[b]])}",
                                diff(by_seed(gn, m), by_seed(norm, m))) if norm else ("", False)
                     for m in ("val/acc_final", "test/acc")}
        table.append([fmt_key(b), edge_words(*chosen[b]), edge_words(gap.best[bn[b]], gap.edge[bn[b]]) if norm
                      else "n/a", fmt_ci(mean_ci(values(gn, "val/acc_final"))),
                      fmt_ci(mean_ci(values(norm, "val/acc_final"))),
                      *[fmt_ci(paired(by_seed(gn, m), by_seed(norm, m))) for m in ("val/acc_final", "test/acc")]])
    rep.table("groupnorm_tuned", head, table)
    rep.text("groupnorm_lr_design", (
        f"{files} {'trains' if len(ran) == 1 else 'train'} 1a's model without batch norm "
        f"(`{kwargs}`: GroupNorm with one group in "
        f"place of every BatchNorm) at batch {numbers(batches)} over lr {said(grid, 'lr')}, "
        f"{design(grid, 'optimizer', 'epochs')}, seeds {numbers(sorted(tuning))}; with `lab1_groupnorm`'s lr "
        f"{said(rep.rows('lab1_groupnorm'), 'lr')} runs of the same seeds, a grid of {len(lrs)}. Each batch "
        "size's best lr (best mean `val/acc_final`) is compared with batch norm's at its best lr (1e), paired by "
        "the seeds both have."
        + commits_note({f"the runs of {files}": grid, "those of `lab1_groupnorm`": [
            r for r in rows if r not in grid]})))
    sentences, slower = [], {}
    for b in batches:
        (val, ok), (test, _) = claims[b]["val/acc_final"], claims[b]["test/acc"]
        lr, edge = chosen[b]
        caveat = f" (GroupNorm's best lr is the {edge} of its grid: not bracketed by it)" if edge else ""
        if val:
            rep.finding("1f", f"At batch {num(b)}, each at its best lr, in val/acc_final after "
                              f"{num(only(grid, 'epochs'))} epochs, {val}{caveat}", ok)
            sentences.append(f"At batch {num(b)}, in validation accuracy after {num(only(grid, 'epochs'))} epochs, "
                             f"{val}; in test accuracy, {test}.")
            below = ok and " below " in val
            slower[b] = "slower" if below and not edge else "edge" if below else "not resolved"
    verdicts = [f"at batch {num(b)}, " + {
        "slower": "GroupNorm trains more slowly than batch norm, each with its lr tuned",
        "edge": f"GroupNorm is below batch norm at its best lr, but that lr, {num(chosen[b][0])}, is the "
                f"{chosen[b][1]} of the grid, so whether a{' lower' if chosen[b][1] == 'lowest' else ' higher'} lr "
                "closes the gap is not measured",
        "not resolved": "a difference from batch norm is not resolved"}[word] for b, word in slower.items()]
    if verdicts:
        sentences.append(f"So, by these rules, {'; '.join(verdicts)}.")
    small, big = batches[0], batches[-1]
    gn_gap, ok = compare(f"batch {num(big)}", f"batch {num(small)}", diff(
        *(by_seed(where(rows, **{B: b, "lr": chosen[b][0]}), "test/acc") for b in (big, small))))
    rep.finding("1f", f"Without batch norm, each at its best lr, in test accuracy, {gn_gap}", ok)
    rep.text("groupnorm_lr_answer", " ".join(sentences) + (
        f" Without batch norm, each batch size at its best lr, in test accuracy {gn_gap}."))


# ---------------------------------------------------------------- Q1: at equal examples

def commits_note(sets):
    """{name: rows} -> ' The x runs come from commit `a` and the y runs from `b` (the provenance table).' when the
    sets were run from different commits (their training code may differ), else ''."""
    def named(rows):
        cs = [f"`{fmt_key(c)[:7]}`" for c in distinct(rows, "git_commit")]
        return ("commit " if len(cs) == 1 else "commits ") + listing(cs)
    commits = {name: named(rows) for name, rows in sets.items()}
    if len(set(commits.values())) < 2:
        return ""
    (first, commit), *rest = commits.items()
    return (f" {first[0].upper()}{first[1:]} come from {commit} and "
            f"{listing(f'{name} from {c}' for name, c in rest)} (the provenance table).")


HELD = (("epoch", "epochs"), ("update", "updates"), ("examples", "images seen"), ("lr", "lr"))


def held_equal(small, big):
    """What two sets of runs hold equal, of epochs, updates, images seen and lr: the words for the settings in
    which every run of both has one and the same value."""
    return [word for key, word in HELD if only(small, key) is not None and only(small, key) == only(big, key)]


def section_equal_examples(rep):
    small = rep.rows("lab1_equal_examples")
    if not small:
        return
    precise = evaluation_runs(rep)["precise BN"]
    b_small, examples = one(small, B), one(small, "examples")
    matching = [b for b in distinct(precise, B) if b != b_small and only(where(precise, **{B: b}), "examples")
                == examples]
    if not matching:
        return
    b_big = matching[-1]
    tuned, updates, gap = tuned_lr_runs(rep), rep.rows("lab1_equal_updates"), gap_analysis(rep)
    ways = {"equal epochs (1c)": (where(precise, **{B: b_small}), where(precise, **{B: b_big})),
            "equal updates (1c)": (where(updates, **{B: b_small}), where(updates, **{B: b_big})),
            "equal examples": (small, where(precise, **{B: b_big})),
            "lr tuned on val (1c)": (tuned.get(b_small, (0, []))[1], tuned.get(b_big, (0, []))[1])}
    if gap:
        ways["lr tuned on val (1e)"] = (gap.tuned["small"], gap.tuned["plain"])
    ways = {w: pair for w, pair in ways.items() if completed(pair[0]) and completed(pair[1])}
    head = ["comparison", "held equal", f"batch {fmt_key(b_small)}: updates, images",
            f"batch {fmt_key(b_big)}: updates, images", "lr", f"test/acc, {fmt_key(b_big)} − {fmt_key(b_small)} "
                                                              "(paired)"]

    def seen(rows):
        return f"{said(rows, 'update')}; {said(rows, 'examples')}"

    rep.table("equal_examples", head, [
        [w, listing(held_equal(a, c)) or "none", seen(a), seen(c), f"{said(a, 'lr')} / {said(c, 'lr')}",
         fmt_ci(paired(by_seed(c, "test/acc"), by_seed(a, "test/acc")))] for w, (a, c) in ways.items()])
    rep.text("equal_examples_design", (
        f"`lab1_equal_examples` trains batch {num(b_small)} for {said(small, 'update')} updates, "
        f"{num(examples)} images: the images batch {num(b_big)} sees in "
        f"{said(where(precise, **{B: b_big}), 'epochs')} epochs (`lab1_batch_size`'s precise-BN runs), at the "
        f"same lr ({said(small, 'lr')}), with the {said(small, 'scheduler')} lr schedule over its own updates and "
        "precise BN; seeds "
        f"{numbers(distinct(small, 'seed'))}, paired with `lab1_batch_size`'s."
        + commits_note({f"the batch-{num(b_small)} runs": small, f"the batch-{num(b_big)} runs": ways[
            "equal examples"][1]})))
    bullets = []
    for w, (a, c) in ways.items():
        sentence, ok = compare(f"batch {num(b_big)}", f"batch {num(b_small)}", diff(by_seed(c, "test/acc"),
                                                                                  by_seed(a, "test/acc")))
        if w == "equal examples":
            rep.finding("1g", f"At equal examples, in test accuracy, {sentence}", ok)
        held = listing(held_equal(a, c)) or "neither epochs, updates, images nor lr"
        bullets.append(f"- **{w}** (holds equal: {held}): {sentence}.")
    rep.text("equal_examples_answer", "In test accuracy, paired by seed:", "\n".join(bullets))

# ---------------------------------------------------------------- Q2: epochs

def curve(history, run_id, metric, x="epoch"):
    """One run's (x, value) points, in order, finite values only."""
    return [(h[x], h[metric]) for h in history if h["run_id"] == run_id and is_number(h.get(metric))]


def section_one_epoch(rep):
    rows = rep.rows("lab1_one_epoch")
    running, precise = where(rows, precise_bn=False), where(rows, precise_bn=True)
    head = ["metric", "running BN", "precise BN", "precise − running (paired)"]
    rep.table("one_epoch", head, [[m, fmt_ci(mean_ci(values(running, m))), fmt_ci(mean_ci(values(precise, m))),
                                   fmt_ci(paired(by_seed(precise, m), by_seed(running, m)))]
                                  for m in ("val/acc_final", "test/acc")])
    epochs, batch = only(rows, "epochs"), only(rows, B)
    rep.text("one_epoch_design", (
        f"The first edition's {num(epochs)}-epoch runs (batch {num(batch)}, {num(only(rows, 'update'))} updates) "
        f"were called under-fitting. `lab1_one_epoch` repeats them ({design(rows, 'optimizer', 'lr', 'seed')}), "
        "evaluated both ways:"))
    gain, ok = compare("precise BN", "running statistics", diff(by_seed(precise, "test/acc"),
                                                                by_seed(running, "test/acc")))
    rep.finding("2a", f"After {num(epochs)} epoch, {gain}", ok)
    longer = where(evaluation_runs(rep)["precise BN"], **{B: batch})
    more = ""
    if longer:
        n = only(longer, "epochs")
        sentence, ok = compare(f"{num(epochs)} epoch", f"{num(n)} epochs",
                               diff(by_seed(precise, "test/acc"), by_seed(longer, "test/acc")))
        rep.finding("2a", f"With precise BN at batch {num(batch)}, {sentence}", ok)
        more = f" Against {num(n)} epochs of the same setting (1a, precise BN), {sentence}."
    rep.text("one_epoch_answer", (
        f"In test accuracy, with running statistics the {num(epochs)}-epoch model scores "
        f"{mean_of(by_seed(running, 'test/acc'))} and with precise BN {mean_of(by_seed(precise, 'test/acc'))}: "
        f"{gain}.{more}"))


def lowest(points):
    return min(points, key=lambda p: p[1])


def section_epochs(rep):
    rows, history = rep.rows("lab1_epochs"), rep.history("lab1_epochs")
    full = where(rows, early_stopping_patience=0)
    stopped = [r for r in rows if r.get("early_stopping_patience")]
    noises = distinct(rows, "label_noise")
    if not noises:
        return
    facts = {}  # label_noise -> {seed: (epoch of lowest val/loss, it, last val/loss, val/acc there, last val/acc)}
    head = ["label_noise", "epoch of lowest val/loss", "val/loss there", "val/loss at the last epoch",
            "rise (paired)", "val/acc there", "val/acc at the last epoch", "fall of val/acc (paired)",
            "train/loss at the last epoch", "train/acc at the last epoch"]
    table = []
    for p in noises:
        runs = completed(where(full, label_noise=p))
        facts[p] = {}
        for r in runs:
            losses = curve(history, r["run_id"], "val/loss")
            accs = dict(curve(history, r["run_id"], "val/acc"))
            epoch, loss = lowest(losses)
            facts[p][r["seed"]] = (epoch, loss, losses[-1][1], accs[epoch], r["val/acc_final"])
        f = facts[p].values()
        train_acc = values(runs, "train/acc")
        table.append([fmt_key(p), fmt_ci(mean_ci(x[0] for x in f), 1), fmt_ci(mean_ci(x[1] for x in f)),
                      fmt_ci(mean_ci(x[2] for x in f)), fmt_ci(mean_ci(x[2] - x[1] for x in f)),
                      fmt_ci(mean_ci(x[3] for x in f)), fmt_ci(mean_ci(x[4] for x in f)),
                      fmt_ci(mean_ci(x[3] - x[4] for x in f)), fmt_summary(values(runs, "train/loss"), 4),
                      f"{fmt_ci(mean_ci(train_acc))}; {sum(a == 1 for a in train_acc)}/{len(train_acc)} at 1.0"])
    rep.table("overfitting", head, table)

    head = ["label_noise", "stopped at epoch", "epoch of the weights kept", "test/acc, early stopped (those weights)",
            "test/acc, all epochs (last weights)", "early − last (paired)", "training time, early (s)",
            "training time, all epochs (s)", "time to the lowest val/loss (s)"]
    table = []
    for p in noises:
        early, last = completed(where(stopped, label_noise=p)), completed(where(full, label_noise=p))
        kept = [lowest(curve(history, r["run_id"], "val/loss"))[0] for r in early]
        to_best = [dict(curve(history, r["run_id"], "time/train_s"))[facts[p][r["seed"]][0]] for r in last]
        table.append([fmt_key(p), fmt_ci(mean_ci(values(early, "epoch")), 1), fmt_ci(mean_ci(kept), 1),
                      fmt_ci(mean_ci(values(early, "test/acc"))), fmt_ci(mean_ci(values(last, "test/acc"))),
                      fmt_ci(paired(by_seed(early, "test/acc"), by_seed(last, "test/acc"))),
                      fmt_ci(mean_ci(values(early, "time/train_s")), 1),
                      fmt_ci(mean_ci(values(last, "time/train_s")), 1), fmt_ci(mean_ci(to_best), 1)])
    rep.table("early_stopping", head, table)
    figure_overfitting(rep, full, stopped, history, noises)
    text_epochs(rep, full, stopped, history, facts)


def figure_overfitting(rep, full, stopped, history, noises):
    fig, axes = new_figure(2, len(noises), (6 * len(noises), 7))
    for i, p in enumerate(noises):
        runs = completed(where(full, label_noise=p))
        for ax, metric, color in ((axes[i], "val/loss", "tab:blue"), (axes[len(noises) + i], "train/loss", "tab:gray")):
            curves = [curve(history, r["run_id"], metric) for r in runs]
            log = spans([y for c in curves for _, y in c], AXIS_SPAN)
            seed_curves(ax, curves, color, metric, f"{metric}, one line per seed", log=log)
            ax.set_yscale("log" if log else "linear")
            ax.set(xlabel="epoch", ylabel=f"{metric} (cross-entropy)",
                   title=f"label noise {p:g}, {design(runs, 'scheduler')}: {metric} (n={len(runs)})")
        for r in completed(where(stopped, label_noise=p)):
            points = curve(history, r["run_id"], "val/loss")
            epoch, loss = lowest(points)
            axes[i].plot([epoch], [loss], "*", color="tab:red", ms=9,
                         label=once(axes[i], "weights kept by early stopping (lowest val/loss)"))
            record(axes[i], "weights kept by early stopping", epoch, loss)
            if r["status"] == "early_stopped":
                axes[i].axvline(r["epoch"], color="tab:red", ls=":", lw=1,
                                label=once(axes[i], f"early stopping (patience {fmt_key(r['early_stopping_patience'])})"
                                                    ": stop epoch"))
                record(axes[i], "early stopping: stop epoch", r["epoch"], None)
    for ax in axes:
        ax.title.set_fontsize(9)
        legend(ax, fontsize=7)
    rep.save(fig, "overfitting")


def text_epochs(rep, full, stopped, history, facts):
    noises = sorted(facts)
    clean, noisy = noises[0], noises[-1]
    rows = full + stopped
    train_size, epochs = one(rows, "train_size"), one(full, "epochs")
    patience = one(stopped, "early_stopping_patience")
    rep.text("epochs_design", (
        f"`lab1_epochs` uses a {said(rows, 'scheduler')} lr ({said(rows, 'optimizer')} at lr "
        f"{said(rows, 'lr')}, batch {said(rows, B)}) for {num(epochs)} epochs on {num(train_size)} "
        "training images, so that epoch k of a run is a k-epoch run, on clean labels and with "
        f"{pct(noisy)} of the training labels replaced by another class (`--label_noise {num(noisy)}`; validation "
        f"and test labels are never changed); {len(distinct(rows, 'seed'))} seeds."))
    rep.text("early_stopping_design", (
        f"The same runs with `--early_stopping_patience {num(patience)}`: each stops {num(patience)} evaluations "
        f"after its lowest validation loss and is tested on the weights of that epoch. Paired by seed with the "
        f"{num(epochs)}-epoch runs, tested on their last weights:"))
    claims = []
    for p in (noisy, clean):
        f = facts[p]
        rise, ok = compare("validation loss at the last epoch", "its minimum", {s: x[2] - x[1] for s, x in f.items()})
        rep.finding("2b", f"With label noise {num(p)}, {rise}", ok)
        fall, ok = compare("validation accuracy at the last epoch", "its value at the lowest validation loss",
                           {s: x[4] - x[3] for s, x in f.items()})
        rep.finding("2b", f"With label noise {num(p)}, {fall}", ok)
        claims.append((rise, fall, ok))
    runs = completed(where(full, label_noise=noisy))
    perfect = sum(r["train/acc"] == 1 for r in runs)
    wrong = round(noisy * train_size)
    f = facts[noisy]
    rep.text("overfitting_answer", (
        f"With {pct(noisy)} of the training labels wrong, validation loss is lowest at epoch "
        f"{fmt_ci(mean_ci(x[0] for x in f.values()), 1, n=False)} "
        f"({fmt_ci(mean_ci(x[1] for x in f.values()), n=False)}),"
        f" and {claims[0][0]}. {claims[0][1][0].upper() + claims[0][1][1:]}"
        + (", as Arpit et al. (2017) describe: the clean pattern first, then the noise" if claims[0][2] else "")
        + f". At the last epoch the train loss is {fmt_summary(values(runs, 'train/loss'), 4, n=False)}, and train "
        "accuracy, measured on the training labels as given (wrong ones included), is 1.0 in "
        f"{seeds(perfect, len(runs))}" + (f": {'those' if perfect < len(runs) else 'they'} fit all {num(wrong)} wrong "
                                          "labels, as Zhang et al. (2017) found" if perfect else "") + "."), (
        f"On clean labels, {claims[1][0]}; {claims[1][1]}, and the train loss ends at "
        f"{fmt_summary(values(completed(where(full, label_noise=clean)), 'train/loss'), 4, n=False)}."))

    paragraphs = []
    for p in (noisy, clean):
        early, last = completed(where(stopped, label_noise=p)), completed(where(full, label_noise=p))
        gains = diff(by_seed(early, "test/acc"), by_seed(last, "test/acc"))
        gain, ok = compare("early stopping's test accuracy", f"that of all {num(epochs)} epochs", gains)
        rep.finding("2c", f"With label noise {num(p)}, {gain}", ok)
        cut = [r for r in early if r["status"] == "early_stopped"]
        cut = sorted(cut, key=lambda r: r["epoch"])
        kept = listing(num(lowest(curve(history, r["run_id"], "val/loss"))[0]) for r in cut)
        time = {k: np.mean(values(rs, "time/train_s")) for k, rs in (("early", early), ("last", last))}
        paragraphs.append(
            f"With label noise {num(p)}, {seeds(len(cut), len(early))} stopped early, at epoch "
            f"{listing(num(r['epoch']) for r in cut)}, keeping the weights of epoch {kept} in that order. Per seed "
            f"the gain in test accuracy is {listing(f'{d:+.3f}' for d in gains.values())}: {gain}, in "
            f"{pct(time['early'] / time['last'])} of the training time ({fmt(time['early'], 1)} s against "
            f"{fmt(time['last'], 1)} s).")
    rep.text("early_stopping_answer", *paragraphs)


def section_cosine(rep):
    rows = rep.rows("lab1_epochs_cosine")
    constant_runs = completed(where(rep.rows("lab1_epochs"), early_stopping_patience=0))
    history = rep.history("lab1_epochs")
    head = ["epochs", "label_noise", "cosine: val/acc at the end", "cosine: test/acc", "cosine: train/loss",
            "cosine: val/loss at the end", "constant lr: val/acc at that epoch", "constant lr: val/loss there"]
    table, constant = [], {}
    for e in distinct(rows, "epochs"):
        for p in distinct(rows, "label_noise"):
            runs = where(rows, epochs=e, label_noise=p)
            ids = {r["run_id"]: r["seed"] for r in where(constant_runs, label_noise=p)}
            points = [h for h in history if h["epoch"] == e and h["run_id"] in ids]
            constant[e, p] = {ids[h["run_id"]]: h for h in points}
            table.append([fmt_key(e), fmt_key(p), fmt_ci(mean_ci(values(runs, "val/acc_final"))),
                          fmt_ci(mean_ci(values(runs, "test/acc"))), fmt_ci(mean_ci(values(runs, "train/loss")), 4),
                          fmt_ci(mean_ci(values(runs, "val/loss_final"))),
                          fmt_ci(mean_ci(h["val/acc"] for h in points)),
                          fmt_ci(mean_ci(h["val/loss"] for h in points))])
    rep.table("cosine", head, table)
    epochs, noises = distinct(rows, "epochs"), distinct(rows, "label_noise")
    if len(epochs) < 2:
        return
    first, mid, longest = epochs[0], epochs[-2], epochs[-1]
    clean, noisy = noises[0], noises[-1]

    def acc(e, p, metric="test/acc"):
        return by_seed(where(rows, epochs=e, label_noise=p), metric)

    def runs_of(e):
        return f"{num(e)} cosine epoch{'s' if e != 1 else ''}"

    rep.text("cosine_design", (
        f"`lab1_epochs_cosine`: {design(rows, 'epochs')}, each its own run with the lr decaying to zero at its "
        f"end, against the constant-lr runs at the same epoch ({design(rows, 'label_noise', 'seed')}):"))
    longer, ok = compare(f"the test accuracy of {runs_of(longest)}", f"that of {num(mid)}", diff(
        acc(longest, noisy), acc(mid, noisy)))
    rep.finding("2d", f"With label noise {num(noisy)}, {longer}", ok)
    against, _ = compare(f"the constant lr's validation accuracy at epoch {num(longest)}", "cosine's", diff(
        {s: h["val/acc"] for s, h in constant[longest, noisy].items()}, acc(longest, noisy, "val/acc_final")))
    same, ok = compare(f"the test accuracy of {runs_of(longest)}", f"that of {num(mid)}", diff(
        acc(longest, clean), acc(mid, clean)))
    rep.finding("2d", f"On clean labels, {same}", ok)
    start, _ = compare(f"the validation accuracy of {runs_of(first)}", "the first epoch of a constant lr", diff(
        acc(first, clean, "val/acc_final"), {s: h["val/acc"] for s, h in constant[first, clean].items()}))
    loss = {e: mean_ci(values(where(rows, epochs=e, label_noise=noisy), "train/loss"))[0] for e in (mid, longest)}
    rep.text("cosine_answer", (
        f"With label noise {num(noisy)}, {longer}, as the train loss falls from {fmt(loss[mid])} to "
        f"{fmt(loss[longest])}; {against}. On clean labels, {same}. On clean labels too, {start}: its lr decays "
        "within that epoch."))


PATIENCE = 5  # early stopping's patience in evaluations, as lab1_epochs.yaml's early-stopped runs (when not loaded)
MEMORISATION = ("train/acc_clean", "train/acc_noisy", "train/acc_noisy_true")


def early_stop(points, patience):
    """train.py's early stopping replayed on one run's (epoch, val/loss) points in order -> (the epoch it stops at,
    None when it never does; the epoch of the weights it keeps: the lowest val/loss up to the stop, the first such)."""
    losses = []
    for epoch, loss in points:
        losses.append(loss if is_number(loss) else math.inf)
        best = losses.index(min(losses))
        if len(losses) - 1 - best >= patience:
            return epoch, points[best][0]
    return None, points[losses.index(min(losses))][0] if losses else None


def first_above(per_epoch, level):
    """{epoch: the seeds' values} -> the first epoch whose mean's 95% interval lies wholly above level, None if
    none does."""
    for epoch in sorted(per_epoch):
        mean, half, _ = mean_ci(per_epoch[epoch])
        if half is not None and mean - half > level:
            return epoch
    return None


def section_memorisation(rep):
    rows, history = rep.rows("lab1_memorisation"), rep.history("lab1_memorisation")
    runs = completed(rows)
    if not runs:
        return
    patience = max(distinct(rep.rows("lab1_epochs"), "early_stopping_patience"), default=PATIENCE)
    metrics = (*MEMORISATION, "val/acc", "val/loss")
    at = {m: {} for m in metrics}  # metric -> {epoch: [the seeds' values]}
    for h in history:
        if h["run_id"] in {r["run_id"] for r in runs}:
            for m in metrics:
                if is_number(h.get(m)):
                    at[m].setdefault(h["epoch"], []).append(h[m])
    stops = {r["seed"]: early_stop(curve(history, r["run_id"], "val/loss"), patience) for r in runs}
    kept = {}  # epoch -> the seeds whose early stopping keeps that epoch's weights
    for s, (_, k) in stops.items():
        kept.setdefault(k, []).append(s)
    epochs = sorted(at["val/loss"])
    rep.table("memorisation", ["epoch", *metrics, "seeds whose early stopping keeps this epoch"], [
        [fmt_key(e), *[fmt_ci(mean_ci(at[m].get(e, []))) for m in metrics],
         ", ".join(fmt_key(s) for s in sorted(kept.get(e, [])))] for e in epochs])
    figure_memorisation(rep, runs, history, stops, patience)
    text_memorisation(rep, rows, runs, history, at, stops, patience)


def figure_memorisation(rep, runs, history, stops, patience):
    fig, axes = new_figure(1, 3, (16, 4.4))
    chance = 1 / one(runs, "num_classes")
    for metric, color, meaning in (("train/acc_clean", "tab:blue", "unchanged labels"),
                                   ("train/acc_noisy", "tab:red", "relabelled, against the wrong label"),
                                   ("train/acc_noisy_true", "tab:green", "relabelled, against the true class")):
        seed_curves(axes[0], [curve(history, r["run_id"], metric) for r in runs], color, metric,
                    f"{metric}: {meaning}")
    axes[0].axhline(chance, color="black", ls=":", lw=1, label="chance (1 / classes)")
    record(axes[0], "chance", None, chance)
    for ax, metric, color in ((axes[1], "val/loss", "tab:purple"), (axes[2], "val/acc", "tab:gray")):
        seed_curves(ax, [curve(history, r["run_id"], metric) for r in runs], color, metric, f"{metric}, per seed")
    for r in runs:
        stop, keep = stops[r["seed"]]
        noisy = dict(curve(history, r["run_id"], "train/acc_noisy"))
        loss = dict(curve(history, r["run_id"], "val/loss"))
        for ax, y in ((axes[0], noisy.get(keep)), (axes[1], loss.get(keep))):
            ax.plot([keep], [y], "*", color="tab:red", ms=9,
                    label=once(ax, f"weights early stopping keeps (patience {num(patience)}), per seed"))
            record(ax, "weights kept by early stopping", keep, y)
        for ax in axes if stop is not None else ():
            ax.axvline(stop, color="tab:red", ls=":", lw=1, label=once(ax, "early stopping's stop epoch, per seed"))
            record(ax, "early stopping: stop epoch", stop, None)
    axes[0].set_ylim(0, 1.02)
    axes[2].set_ylim(0, 1.02)
    axes[0].set(ylabel="accuracy on training images (eval mode)", title="training accuracy, one line per seed")
    axes[1].set(ylabel="val/loss (cross-entropy)", title="validation loss")
    axes[2].set(ylabel="val/acc", title="validation accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.title.set_fontsize(9)
    for ax in axes[1:]:
        legend(ax, fontsize=7)
    legend_below(fig, axes[0], 3)
    rep.save(fig, "memorisation")


def text_memorisation(rep, rows, runs, history, at, stops, patience):
    chance = 1 / one(runs, "num_classes")
    size, noise, last = one(rows, "train_size"), one(rows, "label_noise"), max(at["train/acc_noisy"])
    earlier = distinct(rep.rows("lab1_epochs"), "train_size")
    rep.text("memorisation_design", (
        f"`lab1_memorisation`: {design(rows, 'optimizer', 'lr', 'scheduler', B, 'epochs', 'label_noise', 'seed')}, "
        f"on all {num(size)} training images, {num(round(noise * size))} of them relabelled"
        + (f" (2b–2d's `lab1_epochs` used {listing(num(n) for n in earlier)}, `train_size`)" if earlier else "")
        + ". At every epoch, in evaluation mode, accuracy on the images whose label was kept (`train/acc_clean`), "
        "on the relabelled ones against the wrong label trained on (`train/acc_noisy`: memorisation) and against "
        f"their true class (`train/acc_noisy_true`). Early stopping (patience {num(patience)} on val/loss, as "
        "`lab1_epochs`) is replayed on each run's history: at a constant lr an early-stopped run is a prefix of it."))

    def there(metric, epochs):
        """{seed: metric at that seed's epoch}"""
        found = {r["seed"]: dict(curve(history, r["run_id"], metric)).get(epochs[r["seed"]]) for r in runs}
        return {s: v for s, v in found.items() if v is not None}

    keep = {s: k for s, (_, k) in stops.items()}
    start = min(at["train/acc_noisy"])
    epochs = {"start": {s: start for s in keep}, "kept": keep, "end": {s: last for s in keep}}
    noisy = {name: there("train/acc_noisy", e) for name, e in epochs.items()}
    true = {name: there("train/acc_noisy_true", e) for name, e in epochs.items()}
    first, firsts = compare(f"at epoch {num(start)}, accuracy on the unchanged labels", "that on the wrong ones",
                            diff(there("train/acc_clean", epochs["start"]), noisy["start"]))
    later, laters = compare(f"at epoch {num(last)}, accuracy on the wrong labels", f"its value at epoch {num(start)}",
                            diff(noisy["end"], noisy["start"]))
    above = {s: v - chance for s, v in noisy["kept"].items()}
    kept, ok = compare("at the weights early stopping keeps, accuracy on the wrong labels", "chance", above)
    for sentence, resolved_ in ((first, firsts), (later, laters), (kept, ok)):
        rep.finding("2e", sentence[0].upper() + sentence[1:], resolved_)
    val, _ = compare(f"validation accuracy at epoch {num(last)}", "that at the kept weights",
                     diff(there("val/acc", epochs["end"]), there("val/acc", keep)))
    rise = first_above(at["train/acc_noisy"], chance)
    stopped = [s for s, (stop, _) in stops.items() if stop is not None]
    full = sum(v == 1 for v in noisy["end"].values())
    rep.text("memorisation_answer", (
        f"Chance on the relabelled images is {fmt(chance, 2)} (one class in {num(round(1 / chance))}). Their accuracy "
        f"against the wrong labels is {mean_of(noisy['start'])} at epoch {num(start)} and "
        + (f"first lies above chance (its 95% interval wholly above {fmt(chance, 2)}) at epoch {num(rise)}, at or "
           "before the epoch whose weights early stopping keeps in "
           f"{seeds(sum(k >= rise for k in keep.values()), len(keep))}" if rise is not None
           else "never lies above chance (its 95% interval wholly above it)")
        + f". Early stopping stops {seeds(len(stopped), len(runs))} within the {num(last)} epochs and keeps the "
        f"weights of epoch {listing(num(keep[s]) for s in sorted(keep))} (seeds "
        f"{listing(num(s) for s in sorted(keep))}). There the wrong labels are matched at {mean_of(noisy['kept'])} "
        f"and the relabelled images' true class at {mean_of(true['kept'])}: "
        f"{compare('the accuracy on the wrong labels', 'chance', above)[0]}. At epoch {num(last)} the wrong labels "
        f"are matched at {mean_of(noisy['end'])} ({seeds(full, len(runs))} match every one) and the true class at "
        f"{mean_of(true['end'])}."), (
        f"{first[0].upper() + first[1:]}; {later}"
        + (". The network fits the clean pattern first and memorises the wrong labels later, as Arpit et al. (2017) "
           "describe" if firsts and laters and "above" in first and "above" in later else "")
        + f". Meanwhile {val}."))


# ---------------------------------------------------------------- Q3: learning rate

def rises(points):
    """How many evaluation intervals in which the train loss went up: 0 for a loss that only falls."""
    return sum(b > a for (_, a), (_, b) in zip(points, points[1:], strict=False))


def end_loss(runs, digits=4):
    """The train loss at the end: its summary over the completed runs, and how many diverged (a NaN is counted,
    never averaged)."""
    diverged = len(where(runs, status="diverged"))
    done = values(runs, "train/loss")
    text = fmt_summary(done, digits) if done else ""
    return "; ".join(t for t in (text, f"NaN in {diverged}/{len(runs)} (diverged)" if diverged else "") if t)


def lr_regime(lr, runs, best, finals, chance_loss, chance_acc):
    """The word for what an lr does, by rule: diverged (a NaN), no learning (every seed's final train loss above
    the chance loss ln(classes)), at chance (validation accuracy's interval includes 1/classes), else against the
    lr with the best mean validation accuracy: best, within noise of it, or below it."""
    if where(runs, status="diverged"):
        return "diverged"
    losses = values(runs, "train/loss")
    if losses and min(losses) > chance_loss:
        return "no learning: loss above chance"
    mean, half, _ = mean_ci(finals[lr].values())
    if half is not None and abs(mean - chance_acc) <= half:
        return "at chance"
    if lr == best:
        return "best"
    return "below the best" if compare("", "", diff(finals[lr], finals[best]))[1] else "within noise of the best"


def lr_section(sweep, name, title):
    """The section of one lr sweep (SGD's, AdamW's): a table, a figure of curves and the regimes in words."""
    def section(rep):
        rows, history = rep.rows(sweep), rep.history(sweep)
        lrs = distinct(rows, "lr")
        curves = {r["run_id"]: curve(history, r["run_id"], "train/loss", "update") for r in rows}
        head = ["lr", "runs", "status", "train/loss at the end", "rises of train/loss (of intervals)",
                "val/acc at the end", "test/acc"]
        table = []
        for lr in lrs:
            runs = where(rows, lr=lr)
            long = [curves[r["run_id"]] for r in runs if len(curves[r["run_id"]]) > 1]
            table.append([f"{lr:g}", str(len(runs)), "/".join(distinct(runs, "status")), end_loss(runs),
                          f"{fmt(np.mean([rises(c) for c in long]), 1)} of {max(len(c) for c in long) - 1}" if long
                          else "one point, then NaN", fmt_ci(mean_ci(values(runs, "val/acc_final"))),
                          fmt_ci(mean_ci(values(runs, "test/acc")))])
        rep.table(name, head, table)
        figure_lr(rep, name, title, rows, history, lrs)
        text_lr(rep, sweep, name, rows, lrs, curves)
    return section


def figure_lr(rep, name, title, rows, history, lrs):
    fig, axes = new_figure(1, 2, (12, 4.2))
    colors = plt.cm.tab10(np.arange(len(lrs)) % 10)
    losses = []
    for lr, color in zip(lrs, colors, strict=True):
        runs = where(rows, lr=lr)
        label = f"lr {lr:g}" + "".join(f" ({s})" for s in distinct(runs, "status") if s != "finished")
        for ax, metric in zip(axes, ("train/loss", "val/acc"), strict=True):
            series = [curve(history, r["run_id"], metric, "update") for r in runs]
            losses += [y for c in series for _, y in c] if metric == "train/loss" else []
            seed_curves(ax, series, color, f"lr {lr:g}: {metric}", label if metric == "train/loss" else None,
                        log=metric == "train/loss")
        for r in where(runs, status="diverged"):  # the loss became NaN between evaluation points: where it did
            off_scale(axes[0], r.get("stop/step", math.nan), math.nan, color, f"lr {lr:g}: train/loss",
                      "became NaN (diverged), at that update")
    if spans(losses, AXIS_SPAN):  # the bands of a seed's blow-up reach far beyond its values: clipped
        axes[0].set_yscale("log")
        axes[0].set_ylim(min(losses) / 3, max(losses) * 3)
    axes[0].set(xlabel="update (optimizer step)", ylabel="train loss since the last point",
                title=f"{title}: one line per seed, 95% band of the mean")
    axes[1].set_ylim(0, 1.02)
    axes[1].set(xlabel="update (optimizer step)", ylabel="val accuracy", title="validation accuracy (precise BN)")
    for ax in axes:
        ax.title.set_fontsize(9)
    legend_below(fig, axes[0], 5)
    rep.save(fig, name)


def text_lr(rep, sweep, name, rows, lrs, curves):
    classes = one(rows, "num_classes")
    chance_loss, chance_acc = math.log(classes), 1 / classes
    finals = {lr: by_seed(where(rows, lr=lr), "val/acc_final") for lr in lrs}
    whole = [lr for lr in lrs if len(completed(where(rows, lr=lr))) == len(where(rows, lr=lr))]
    best = max(whole, key=lambda lr: np.mean(list(finals[lr].values())))
    bullets, regimes = [], {}
    for lr in lrs:
        runs = where(rows, lr=lr)
        regime = regimes[lr] = lr_regime(lr, runs, best, finals, chance_loss, chance_acc)
        points = [curves[r["run_id"]] for r in runs]
        first = [c[0][1] for c in points if c]
        if regime == "diverged":
            diverged = where(runs, status="diverged")
            when = numbers(sorted({c[0][0] for c in points if c}))
            before = (f"after a finite first evaluation in {seeds(len(first), len(runs), 'runs')} (train loss "
                      f"{fmt_summary(first, 3, n=False)} at update {when})" if first else "before its first evaluation")
            steps = listing((num(x) for x in distinct(diverged, "stop/step")), "or")
            bullets.append(f"- **lr {num(lr)}, {regime}:** the loss became NaN at update {steps} in "
                           f"{seeds(len(diverged), len(runs), 'runs')}"
                           f", {before}; train.py records them as `diverged` (counted, never averaged).")
            continue
        long = [c for c in points if len(c) > 1]
        against = "" if lr == best else "; " + compare(f"lr {num(lr)}", f"lr {num(best)}",
                                                       diff(finals[lr], finals[best]))[0]
        bullets.append(
            f"- **lr {num(lr)}, {regime}:** train loss {fmt_summary(first, 3, n=False)} at the first evaluation and "
            f"{fmt_summary(values(runs, 'train/loss'), 3, n=False)} at the end, rising in "
            f"{fmt(np.mean([rises(c) for c in long]), 1)} of {max(len(c) for c in long) - 1} intervals; validation "
            f"accuracy {mean_of(finals[lr])}{against}"
            + ("; train.py records these runs as `finished`: the loss stayed finite" if regime.startswith("no") else "")
            + ".")
    near = [num(lr) for lr in lrs if regimes[lr] == "within noise of the best"]
    below = [num(lr) for lr in lrs if regimes[lr] == "below the best"]
    if near:
        rep.finding("3", f"In `{sweep}`, lr {listing(near)} {'are' if len(near) > 1 else 'is'} within noise of the "
                         f"best lr ({num(best)}) in validation accuracy", False)
    if below:
        rep.finding("3", f"In `{sweep}`, lr {listing(below)} {'are' if len(below) > 1 else 'is'} below the best lr "
                         f"({num(best)}) in validation accuracy", True)
    low = lrs[0]
    updates = only(where(rows, lr=low), "update")
    adam = (f"At lr {num(low)} an Adam-family step moves each weight by about the lr per update (Kingma & Ba 2015),"
            f" so its {num(updates)} updates move a weight by at most about {num(float(f'{low * updates:.2g}'))}."
            if str(only(rows, "optimizer")).startswith("adam") and updates else "")
    rep.text(f"{name}_design", (
        f"`{sweep}`: {design(rows, 'optimizer', 'momentum', 'weight_decay', 'scheduler', 'lr', B, 'epochs', 'seed')}"
        f", {design(rows, 'evals_per_epoch')}."))
    rep.text(f"{name}_answer", (
        f"Chance is a train loss of ln {classes} = {chance_loss:.2f} and a validation accuracy of "
        f"{chance_acc:.2f}. Each lr's regime, by the rules of `lr_regime` (report.py):"), "\n".join(bullets), (
        f"Within noise of the best validation accuracy (lr {num(best)}): lr {listing(near) or 'none'}. " + adam))


# ---------------------------------------------------------------- Q3: the edges of the usable band

TRAINS = 0.9  # val/acc_final an lr must reach in every seed to count as training (chance is 0.1)
AT_BOUND = math.sqrt(2)  # "at the bound": within this factor of it, nearer it than the bound of either grid neighbour
FLAT = 0.01  # |top eigenvalue| below this: a flat loss, not a stable one (no run that trains goes below 0.5)
AGREE = 0.1  # two loss curves agree when their gap's 95% interval lies within this share of the loss's fall


def every(n):
    """every(1) 'every', every(2) 'every second', every(5) 'every 5th'."""
    return "every" + {1: "", 2: " second", 3: " third"}.get(n, f" {num(n)}th")


def stability_bound(lr, momentum):
    """The largest sharpness at which SGD with heavy-ball momentum (PyTorch's form) is stable on a quadratic:
    2 (1 + momentum) / lr."""
    return 2 * (1 + momentum) / lr


def sharpness_points(history, run_id):
    """One run's (update, sharpness/top_eig) at the points where it was measured, NaN and inf kept."""
    return [(h["update"], h["sharpness/top_eig"]) for h in history
            if h["run_id"] == run_id and isinstance(h.get("sharpness/top_eig"), (int, float))]


def against_bound(points, bound):
    """A run's sharpness against the bound -> {largest, last, above: share of the measurements above the bound (an
    inf counts, a NaN is not a measurement), late: median ratio to the bound over the second half of them,
    nonfinite: how many were NaN or inf, flat: how many were within FLAT of 0, measured}; None when nothing was
    measured."""
    measured = [v for _, v in points if not math.isnan(v)]
    if not measured:
        return None
    return {"largest": max(measured), "peak": max(measured) / bound, "last": points[-1][1],
            "above": sum(v > bound for v in measured) / len(measured),
            "late": float(np.median(measured[len(measured) // 2:])) / bound,
            "nonfinite": sum(not math.isfinite(v) for _, v in points), "flat": sum(abs(v) < FLAT for v in measured),
            "measured": len(measured)}


def sharpness_regime(stats, trains_):
    """Seeds' against_bound() of one lr -> (what its sharpness does, in words, whether every seed agrees). Each
    seed's second half (median ratio to the bound) is above, at (within a factor AT_BOUND) or below the bound, and
    its peak reaches the bound or not (within AT_BOUND): the words need every seed to agree."""
    n = len(stats)
    late = ["above" if a["late"] > AT_BOUND else "below" if a["late"] < 1 / AT_BOUND else "at" for a in stats]
    peaks = sum(a["peak"] >= 1 / AT_BOUND for a in stats)
    if late.count("below") == n:
        if peaks == n:
            return (f"reaches the bound and then, over its second half, sits below it in {seeds(n, n)}" + (
                ": cut back once it reaches the bound, as in the catapult (Lewkowycz et al. 2020), rather than "
                "hovering at it (the edge of stability, Cohen et al. 2021)" if trains_ else ", yet the run does not "
                "train")), True
        if peaks == 0:
            return f"stays below the bound in {seeds(n, n)}: stable, as classical theory has it", True
        return f"ends below the bound in {seeds(n, n)}, after reaching it in {seeds(peaks, n)}", False
    if late.count("at") == n:
        return f"hovers at the bound in {seeds(n, n)}: the edge of stability (Cohen et al. 2021)", True
    if late.count("above") == n:
        return f"stays above the bound in {seeds(n, n)}" + (", while it trains" if trains_ else ""), True
    return ("in its second half is " + listing(f"{w} the bound in {late.count(w)}" for w in ("below", "at", "above")
                                               if late.count(w)) + f" of the {n} seeds"), False


def trains(runs, threshold=TRAINS):
    """Whether an lr trains: every run ended on purpose (none diverged) with val/acc_final >= threshold."""
    return bool(runs) and all(r["status"] in runfiles.COMPLETED and is_number(r.get("val/acc_final"))
                              and r["val/acc_final"] >= threshold for r in runs)


def band_edge(verdicts):
    """{lr: trains} -> (the largest lr that trains with every smaller lr training too, the next lr: the first that
    fails); None for either that does not exist."""
    lrs = sorted(verdicts)
    fails = [lr for lr in lrs if not verdicts[lr]]
    first_fail = fails[0] if fails else None
    good = [lr for lr in lrs if first_fail is None or lr < first_fail]
    return (good[-1] if good else None), first_fail


def section_edge(rep):
    rows, history = rep.rows("lab1_edge"), rep.history("lab1_edge")
    lrs = distinct(rows, "lr")
    if not lrs:
        return
    momentum = one(rows, "momentum")
    edge = {}  # lr -> {seed: against_bound(...)}
    for lr in lrs:
        bound = stability_bound(lr, momentum)
        edge[lr] = {r["seed"]: a for r in where(rows, lr=lr)
                    if (a := against_bound(sharpness_points(history, r["run_id"]), bound))}
    head = ["lr", "2(1 + momentum)/lr", "runs", "diverged", "val/acc_final", f"seeds at val/acc ≥ {num(TRAINS)}",
            "largest sharpness", "largest / bound", "last sharpness", "last / bound", "measurements above the bound",
            "second half / bound (each run's median)", f"flat measurements (|λ| < {num(FLAT)})"]
    table = []
    for lr in lrs:
        runs, got = where(rows, lr=lr), edge[lr].values()
        bound = stability_bound(lr, momentum)
        above = [(a["above"], len(sharpness_points(history, r["run_id"]))) for r in runs
                 if (a := edge[lr].get(r["seed"]))]
        table.append([f"{lr:g}", fmt(bound, 2), str(len(runs)), f"{len(where(runs, status='diverged'))}/{len(runs)}",
                      fmt_ci(mean_ci(values(runs, "val/acc_final"))),
                      f"{sum(trains([r]) for r in runs)}/{len(runs)}",
                      fmt_summary([a["largest"] for a in got], 1), fmt_summary([a["largest"] / bound for a in got], 2),
                      fmt_summary([a["last"] for a in got], 1), fmt_summary([a["last"] / bound for a in got], 2),
                      pct(np.mean([s for s, _ in above])) if above else "n/a",
                      fmt_summary([a["late"] for a in got], 2),
                      f"{sum(a['flat'] for a in got)}/{sum(a['measured'] for a in got)}"])
    rep.table("edge", head, table)
    figure_edge(rep, rows, history, lrs, momentum)
    text_edge(rep, rows, lrs, edge, momentum)


def figure_edge(rep, rows, history, lrs, momentum):
    """A panel per lr: each seed's sharpness per update on one log axis for all, its bound dashed; flat and
    non-finite measurements as markers on the edges. The last panel: val/acc_final per lr."""
    cols = 3
    fig, axes = new_figure(math.ceil((len(lrs) + 1) / cols), cols, (13, 3.2 * math.ceil((len(lrs) + 1) / cols)))
    ys = [v for r in rows for _, v in sharpness_points(history, r["run_id"]) if is_number(v) and v >= FLAT]
    ys += [stability_bound(lr, momentum) for lr in lrs]
    for ax, lr in zip(axes, lrs, strict=False):
        runs, bound = where(rows, lr=lr), stability_bound(lr, momentum)
        points = [sharpness_points(history, r["run_id"]) for r in runs]
        series = f"lr {lr:g}: sharpness/top_eig"
        seed_curves(ax, [[(u, v) for u, v in p if is_number(v) and v >= FLAT] for p in points], "tab:blue", series,
                    "sharpness, one line per seed", log=True)
        for u, v in (x for p in points for x in p if not (is_number(x[1]) and x[1] >= FLAT)):
            if is_number(v):  # no place on a log axis: the bottom edge
                ax.plot([u], [0], marker="v", ls="none", color="tab:orange", clip_on=False,
                        transform=ax.get_xaxis_transform(), label=f"flat: below {num(FLAT)} or negative (bottom edge)")
                record(ax, series, u, v)
            else:
                off_scale(ax, u, v, "tab:orange", series, "sharpness not finite, at that update")
        for r in where(runs, status="diverged"):
            off_scale(ax, r.get("stop/step", math.nan), math.nan, "tab:red", f"lr {lr:g}: train/loss",
                      "loss became NaN (diverged), at that update")
        ax.axhline(bound, color="black", ls="--", lw=1, label="2(1 + momentum)/lr")
        record(ax, f"lr {lr:g}: 2(1 + momentum)/lr", None, bound)
        ax.set_yscale("log")
        ax.set_ylim(min(ys) / 2, max(ys) * 2)
        ax.set(xlabel="update (optimizer step)", ylabel="top Hessian eigenvalue",
               title=f"lr {lr:g}: {sum(trains([r]) for r in runs)} of {len(runs)} seeds at val/acc ≥ {num(TRAINS)}")
    acc = axes[len(lrs)]
    colors = plt.cm.viridis(np.linspace(0, 0.92, len(lrs)))
    for lr, color in zip(lrs, colors, strict=True):
        seeds_ci(acc, lr, [r.get("val/acc_final", math.nan) if r["status"] in runfiles.COMPLETED else math.nan
                           for r in where(rows, lr=lr)], color, f"lr {lr:g}: val/acc_final",
                 meaning="diverged (NaN loss)")
    acc.axhline(TRAINS, color="black", ls=":", lw=1, label=f"trains: val/acc ≥ {num(TRAINS)} in every seed")
    record(acc, "threshold of training", None, TRAINS)
    lr_axis(acc, lrs)
    acc.set_ylim(0, 1.02)
    acc.set(xlabel="lr", ylabel="val accuracy at the end", title=f"val/acc_final, {design(rows, 'epochs')}")
    legend(acc, fontsize=7, loc="lower left")
    for ax in axes[len(lrs) + 1:]:
        ax.axis("off")
    for ax in axes:
        ax.title.set_fontsize(9)
    merged = {}  # one legend for the lr panels: every kind of mark any of them has
    for ax in axes[:len(lrs)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            merged.setdefault(label, handle)
    fig.legend(merged.values(), merged.keys(), loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.bottom = (math.ceil(len(merged) / 3) * 11 + 6) / (72 * fig.get_figheight())
    rep.save(fig, "edge")


def text_edge(rep, rows, lrs, edge, momentum):
    runs = {lr: where(rows, lr=lr) for lr in lrs}
    verdicts = {lr: trains(runs[lr]) for lr in lrs}
    good, bad = band_edge(verdicts)
    finals = {lr: by_seed(runs[lr], "val/acc_final") for lr in lrs}
    rep.text("edge_design", (
        f"`lab1_edge`: {design(rows, 'optimizer', 'momentum', 'weight_decay', 'scheduler', 'lr', B, 'epochs', 'seed')}"
        f", {design(rows, 'evals_per_epoch')}. The sharpness, the top eigenvalue of the training loss's Hessian, is "
        f"measured at {every(only(rows, 'sharpness_every'))} evaluation point and at the last update, by power "
        f"iteration (at most {num(only(rows, 'sharpness_iters'))} Hessian-vector products) on "
        f"{num(only(rows, 'sharpness_samples'))} fixed training images as one batch in train mode. Its stability bound "
        f"for momentum {num(momentum)} is 2(1 + {num(momentum)})/lr: "
        f"{listing(f'{fmt(stability_bound(lr, momentum), 2)} at lr {num(lr)}' for lr in (lrs[0], lrs[-1]))}."))
    if good is None:
        band = f"no lr of the grid trains (val/acc ≥ {num(TRAINS)} in every seed)"
    else:
        band = (f"the largest lr that trains (val/acc_final ≥ {num(TRAINS)} in every seed, no run diverged, every "
                f"smaller lr training too) is {num(good)} ({mean_of(finals[good])})")
        if bad is not None:
            fails = where(runs[bad], status="diverged")
            low = [r for r in completed(runs[bad]) if not trains([r])]
            sentence, ok = compare(f"lr {num(bad)}", f"lr {num(good)}", diff(finals[bad], finals[good]))
            band += (f", and the first that fails is {num(bad)}: {seeds(len(low), len(runs[bad]), 'runs')} below "
                     f"{num(TRAINS)}" + (f" and {len(fails)} diverged" if fails else "") + f"; {sentence}")
            rep.finding("3a", f"In `lab1_edge`, by the threshold the usable lr band ends between lr {num(good)} and "
                              f"lr {num(bad)}; by comparison, {sentence}", ok)
        dead = [lr for lr in lrs if bad is not None and lr >= bad and not any(trains([r]) for r in runs[lr])]
        if dead and dead[0] != bad:  # the band's edge lies between good and the first lr that fails in every seed
            sentence, ok = compare(f"lr {num(dead[0])}", f"lr {num(good)}", diff(finals[dead[0]], finals[good]))
            band += (f". The first lr that fails in every seed is {num(dead[0])} ({mean_of(finals[dead[0]])}): "
                     f"{sentence}")
            rep.finding("3a", f"In `lab1_edge`, the first lr that fails in every seed is {num(dead[0])}: {sentence}",
                        ok)
        again = [num(lr) for lr in lrs if bad is not None and lr > bad and verdicts[lr]]
        band += f" (yet lr {listing(again)} trains again)" if again else ""
    bullets = []
    for lr in lrs:
        got = edge[lr]
        if not got:
            continue
        bound = stability_bound(lr, momentum)
        word, agree = sharpness_regime(list(got.values()), verdicts[lr])
        drop = sum(a["last"] < bound for a in got.values())
        flat = sum(a["flat"] for a in got.values())
        bullets.append(
            f"- **lr {num(lr)}** (bound {fmt(bound, 2)}, {'trains' if verdicts[lr] else 'fails'}): the sharpness "
            f"{word}. It peaks at {fmt_summary([a['peak'] for a in got.values()], 2, n=False)} times the bound, with "
            f"{pct(np.mean([a['above'] for a in got.values()]))} of the measurements above it; over the second half "
            f"of training it is {fmt_summary([a['late'] for a in got.values()], 2, n=False)} times the bound (each "
            f"run's median over it), and the last measurement is below the bound in "
            f"{seeds(drop, len(got))}" + (f". Of its {sum(a['measured'] for a in got.values())} measurements, {flat} "
                                           f"are flat (|λ| < {num(FLAT)}): below the bound because the loss no longer "
                                           "curves, not because training is stable" if flat else "") + ".")
        if lr in (good, bad):
            rep.finding("3a", f"At lr {num(lr)} ({'trains' if verdicts[lr] else 'fails'}), the sharpness {word}",
                        agree)
    rep.text("edge_answer", f"In `lab1_edge`, {band}.",
             "Where each lr's sharpness sits against its bound. A run's peak *reaches* the bound, and the median of "
             "its second half of measurements is *at* the bound, when within a factor "
             f"{fmt(AT_BOUND, 2)} of it (halfway, on a log scale, to a neighbouring lr's bound); the words need every "
             "seed to agree:",
             "\n".join(bullets))


def momentum_steps(updates, momentum):
    """Plain steps that `updates` steps of heavy-ball momentum (PyTorch's form) move the weights under a constant
    gradient, over 1/(1 - momentum): updates - momentum (1 - momentum^updates) / (1 - momentum). The buffer takes
    about momentum / (1 - momentum) updates to build up, a lag that lr × updates leaves in."""
    return updates - momentum * (1 - momentum ** updates) / (1 - momentum) if momentum else updates


def lr_time(history, run_id, lr, metric, middle=False, momentum=0.0):
    """One run's (lr × updates, metric) points, the updates as momentum_steps counts them: gradient flow's time, in
    which small steps of any lr trace one curve. With middle, each point sits at the middle of its interval, as
    train/loss is the mean over it."""
    points, before = [], 0
    for h in (h for h in history if h["run_id"] == run_id):
        if is_number(h.get(metric)):
            steps = [momentum_steps(u, momentum) for u in (before, h["update"])]
            points.append((lr * (sum(steps) / 2 if middle else steps[1]), h[metric]))
        before = h["update"]
    return points


def gap(slow, fast):
    """Two curves of (x, y) points, x increasing -> [(x, slow's y - fast's y)] at slow's points within the range
    both cover, fast's value there interpolated linearly between its points."""
    if not slow or not fast:
        return []
    low, high = max(slow[0][0], fast[0][0]), min(slow[-1][0], fast[-1][0])
    xs, ys = zip(*fast, strict=True)
    return [(x, y - float(np.interp(x, xs, ys))) for x, y in slow if low <= x <= high]


def agreement(gaps, fall):
    """Per-seed mean gaps between two curves and the loss's fall over their common range -> the verdict by rule:
    'agree' when the gap's 95% interval lies within ±AGREE × fall, else 'differ' when it excludes 0, else 'not
    resolved'."""
    mean, half, n = mean_ci(gaps)
    if n < 2 or half is None:
        return "not resolved"
    if abs(mean) + half <= AGREE * abs(fall):
        return "agree"
    return "differ" if abs(mean) > half else "not resolved"


TIMES_SLOW = ("lr × updates", "lr × momentum-corrected updates")  # the two times 3b compares curves in


def slow_curves(rep):
    """lab1_lr_slow's runs, the lab1_lr runs at the next lr of its grid (the reference), their momentum, and each
    seed's curves of train/loss (at interval middles) and val/acc in both TIMES_SLOW:
    {time: {metric: {seed: (slow points, reference points)}}}."""
    rows, history = rep.rows("lab1_lr_slow"), rep.history("lab1_lr_slow")
    grid, grid_history = rep.rows("lab1_lr"), rep.history("lab1_lr")
    lr = one(rows, "lr")
    faster = [x for x in distinct(grid, "lr") if x > lr]
    ref_lr = faster[0] if faster else None
    ref = completed(where(grid, lr=ref_lr))
    momentum = one(rows + ref, "momentum") if any("momentum" in r for r in rows + ref) else 0.0
    curves = {time: {} for time in TIMES_SLOW}
    for time, m in zip(TIMES_SLOW, (0.0, momentum), strict=True):
        for metric, middle in (("train/loss", True), ("val/acc", False)):
            fast = {r["seed"]: lr_time(grid_history, r["run_id"], ref_lr, metric, middle, m) for r in ref}
            curves[time][metric] = {r["seed"]: (lr_time(history, r["run_id"], lr, metric, middle, m), fast[r["seed"]])
                                    for r in completed(rows) if r["seed"] in fast}
    return rows, lr, ref, ref_lr, momentum, curves


def section_lr_slow(rep):
    rows, lr, ref, ref_lr, momentum, curves = slow_curves(rep)
    if not rows:
        return
    head = ["run", "lr", "epochs", "updates", "lr × updates at the end", "train/loss at the end",
            "val/acc at the end", f"seeds at val/acc ≥ {num(TRAINS)}"]
    table = [[f"`{sweep}`", num(x), fmt_key(only(runs, "epochs")), fmt_key(only(runs, "update")),
              fmt(x * only(runs, "update"), 4) if only(runs, "update") else "n/a",
              fmt_ci(mean_ci(values(runs, "train/loss"))), fmt_ci(mean_ci(values(runs, "val/acc_final"))),
              f"{sum(trains([r]) for r in runs)}/{len(runs)}"]
             for sweep, x, runs in (("lab1_lr_slow", lr, rows), ("lab1_lr", ref_lr, ref)) if runs]
    rep.table("lr_slow", head, table)
    figure_lr_slow(rep, lr, ref_lr, momentum, curves)
    text_lr_slow(rep, rows, lr, ref, ref_lr, momentum, curves)


def figure_lr_slow(rep, lr, ref_lr, momentum, curves):
    fig, axes = new_figure(2, 2, (12, 8))
    for row, time in enumerate(TIMES_SLOW):
        for ax, metric in zip(axes[2 * row:], ("train/loss", "val/acc"), strict=False):
            pairs = curves[time][metric].values()
            for i, (name, color) in enumerate(((f"lr {num(lr)}", "tab:orange"), (f"lr {num(ref_lr)}", "tab:blue"))):
                seed_curves(ax, [p[i] for p in pairs], color, f"{name}: {metric}", f"{name}, one line per seed")
            common = [x for slow, fast in pairs for x, _ in gap(slow, fast)]
            if common:
                ax.axvspan(min(common), max(common), color="gray", alpha=0.12, lw=0,
                           label=f"range both cover (compared at lr {num(lr)}'s points)")
                record(ax, "range compared", min(common), None, min(common), max(common))
            log_ticks(ax, [x for p in pairs for c in p for x, _ in c])
            ax.set(xlabel=time if row == 0 else f"lr × (updates − m(1 − m^updates)/(1 − m)), m = {num(momentum)}",
                   ylabel=metric + (" (interval mean, at its middle)" if metric == "train/loss" else ""),
                   title=f"{metric} against {time}: only slow if the curves agree")
            ax.set_ylim(*((0, 1.02) if metric == "val/acc" else ax.get_ylim()))
            ax.title.set_fontsize(9)
            legend(ax, fontsize=7)
    rep.save(fig, "lr_slow")


def log_ticks(ax, xs):
    """A log x axis ticked at 1, 2 and 5 times powers of 10 where the values span a decade or more."""
    if spans(xs, AXIS_SPAN):
        ax.set_xscale("log")
        ticks = [m * 10.0 ** k for k in range(-6, 3) for m in (1, 2, 5) if min(xs) <= m * 10.0 ** k <= max(xs)]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()


def mean_gaps(pairs):
    """{seed: (slow curve, reference curve)} -> ({seed: mean gap over the common range}, its lowest x, highest x,
    the reference's mean fall over it)."""
    per_seed = {s: gap(*c) for s, c in pairs.items()}
    gaps = {s: float(np.mean([d for _, d in g])) for s, g in per_seed.items() if g}
    xs = [x for g in per_seed.values() for x, _ in g]
    if not xs:
        return gaps, math.nan, math.nan, math.nan
    low, high = min(xs), max(xs)
    fall = float(np.mean([np.interp(low, *zip(*fast, strict=True)) - np.interp(high, *zip(*fast, strict=True))
                          for _, fast in pairs.values()]))
    return gaps, low, high, fall


def text_lr_slow(rep, rows, lr, ref, ref_lr, momentum, curves):
    rep.text("lr_slow_design", (
        f"`lab1_lr_slow`: "
        f"{design(rows, 'optimizer', 'momentum', 'weight_decay', 'scheduler', 'lr', B, 'epochs', 'seed')}, evaluated "
        f"at the end of each epoch: {num(only(rows, 'update'))} updates, against the "
        f"{num(only(ref, 'update'))} of `lab1_lr`'s {num(only(ref, 'epochs'))}-epoch runs at lr {num(ref_lr)}, "
        "compared at equal lr × updates, plain and momentum-corrected."))
    raw, corrected = TIMES_SLOW
    if ref_lr is None or not curves[raw]["train/loss"]:
        return
    found = {}
    for time in TIMES_SLOW:
        gaps, low, high, fall = mean_gaps(curves[time]["train/loss"])
        found[time] = (compare(f"lr {num(lr)}'s train loss", f"lr {num(ref_lr)}'s", gaps)[0],
                       compare("its validation accuracy", f"lr {num(ref_lr)}'s",
                               mean_gaps(curves[time]["val/acc"])[0])[0], low, high, fall,
                       agreement(list(gaps.values()), fall))
    meaning = {"agree": "the curves agree: lr {} is only slow, as gradient flow predicts for small steps",
               "differ": "the curves differ by more than that: lr {} is not only slow",
               "not resolved": "these seeds cannot tell whether lr {} is only slow"}
    decisive = corrected if momentum else raw
    loss, acc, low, high, fall, verdict = found[decisive]
    lag = momentum / (1 - momentum) if momentum else 0
    rule = (f"Over that range the train loss of lr {num(ref_lr)} falls by {fmt(fall)}; the rule (agree when the gap's "
            f"95% interval lies within ±{pct(AGREE)} of that fall) says: {meaning[verdict].format(num(lr))}.")
    rep.text("lr_slow_answer", (
        f"Over the range of {raw} both cover ({fmt(found[raw][2], 4)} to {fmt(found[raw][3], 4)}; each lr {num(lr)} "
        f"point against lr {num(ref_lr)}'s curve interpolated there), averaged over the points and paired by seed, "
        f"{found[raw][0]}; {found[raw][1]}." + ("" if momentum else " " + rule)), (
        f"But momentum {num(momentum)} builds its step up over about m/(1 − m) = {fmt(lag, 0)} updates, a lag of "
        f"{fmt(lag * ref_lr, 4)} in lr × updates at lr {num(ref_lr)} and {fmt(lag * lr, 4)} at lr {num(lr)}. In "
        f"{corrected} (the distance a constant gradient carries the weights, `momentum_steps` in report.py), from "
        f"{fmt(low, 4)} to {fmt(high, 4)}, {loss}; {acc}. {rule}" if momentum else ""),
        useful_accuracy(rep, rows, lr))
    rep.finding("3b", f"In {decisive} from {fmt(low, 4)} to {fmt(high, 4)}, {loss}: "
                      f"{meaning[verdict].format(num(lr))}", verdict != "not resolved")


def useful_accuracy(rep, rows, lr):
    """Whether the slow lr reaches a useful accuracy: against TRAINS and against lab1_lr's best lr, in words."""
    finals, grid = by_seed(rows, "val/acc_final"), rep.rows("lab1_lr")
    whole = [x for x in distinct(grid, "lr") if len(completed(where(grid, lr=x))) == len(where(grid, lr=x))]
    best = max(whole, key=lambda x: np.mean(values(where(grid, lr=x), "val/acc_final")))
    useful, _ = compare(f"lr {num(lr)} after {num(only(rows, 'epochs'))} epochs", f"`lab1_lr`'s best lr ({num(best)}) "
                        f"after {num(only(where(grid, lr=best), 'epochs'))}",
                        diff(finals, by_seed(where(grid, lr=best), "val/acc_final")))
    return (f"After {num(only(rows, 'epochs'))} epochs lr {num(lr)} reaches a validation accuracy of "
            f"{mean_of(finals)}, at least {num(TRAINS)} in {seeds(sum(trains([r]) for r in rows), len(rows))}; "
            f"{useful}.")


# ---------------------------------------------------------------- Q4: learning rate and batch size

STEPS = ("lab1_steps", "lab1_steps_up", "lab1_steps_down")  # one grid: the second two extend the first's edges


def grid_key(rows):
    """The lr setting a grid is laid out in: lr_base (scaled with the batch) where the runs have it, else lr."""
    return "lr_base" if any("lr_base" in r for r in rows) else "lr"


def steps_cells(rows, key="lr_base"):
    """{batch: {grid lr: {seed: updates to the target}}}; a run that ended without reaching it (its epochs ran
    out, or it diverged) counts as infinitely many updates; a failed run is left out."""
    cells = {}
    for r in rows:
        if r["status"] not in runfiles.COMPLETED:
            continue
        reached = r["status"] == "reached_target" and is_number(r.get("target/updates"))
        cells.setdefault(r[B], {}).setdefault(r[key], {})[r["seed"]] = r["target/updates"] if reached else math.inf
    return cells


def lr_scale(rows, key):
    """{batch: lr / grid lr}: the factor from a grid value to the lr the runs trained with (B/lr_base_size for
    lr_base), read from the runs themselves."""
    return {b: float(np.median([r["lr"] / r[key] for r in where(rows, **{B: b})])) for b in distinct(rows, B)}


def cell_mean(updates):
    return float(np.mean(updates)) if updates and all(map(math.isfinite, updates)) else math.inf


def best_lr(means):
    """{lr: mean updates} -> (lr at the minimum of a parabola in log lr through the finite cells, the grid's fewest
    updates). The optimum is NaN where the parabola opens downwards or its minimum lies outside the grid: the grid
    does not bracket it."""
    finite = {lr: m for lr, m in means.items() if math.isfinite(m)}
    best = min(finite.values(), default=math.inf)
    if len(finite) < 3:
        return math.nan, best
    x, y = np.log(list(finite)), np.log(list(finite.values()))
    a, b, _ = np.polyfit(x, y, 2)
    vertex = -b / (2 * a) if a > 0 else math.nan
    inside_grid = math.isfinite(vertex) and x.min() <= vertex <= x.max()
    return (float(math.exp(vertex)) if inside_grid else math.nan), best


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


def lr_slope(batches, lrs):
    """Least-squares slope of log lr* against log B; NaN unless every batch size has an optimum, so that every
    estimate is over the same batch sizes."""
    if len(batches) < 2 or not all(map(math.isfinite, lrs)):
        return math.nan
    return stats.linregress(np.log(batches), np.log(lrs)).slope


def analyse_steps(cells, scale):
    """-> {batch: (grid lr*, S)}, (S_min, B_crit), slope of the lr itself: the estimates from these cells."""
    per_batch = {b: best_lr({lr: cell_mean(list(seeds_.values())) for lr, seeds_ in sorted(lrs.items())})
                 for b, lrs in sorted(cells.items())}
    batches = list(per_batch)
    fit = fit_critical_batch(batches, [s for _, s in per_batch.values()])
    return per_batch, fit, lr_slope(batches, [lr * scale[b] for b, (lr, _) in per_batch.items()])


def bootstrap_steps(cells, scale, reps=BOOTSTRAP):
    """The estimates of analyse_steps over resamples of each cell's seeds (with replacement); a fixed generator,
    so the report is the same every time. -> list of analyse_steps results."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(reps):
        sample = {b: {lr: dict(enumerate(rng.choice(list(s.values()), len(s)))) for lr, s in lrs.items()}
                  for b, lrs in cells.items()}
        out.append(analyse_steps(sample, scale))
    return out


class Steps(NamedTuple):
    """lab1_steps and its extensions as one grid, and the estimates from it (computed once a report)."""
    rows: list
    key: str  # the grid's lr setting
    cells: dict
    scale: dict
    per_batch: dict
    fit: tuple  # (S_min, B_crit)
    slope: float
    boot: list
    target: float
    size: int  # lr_base_size
    train_size: int


def steps_analysis(rep):
    if "steps" not in rep.cache:
        rows = rep.rows(*STEPS)
        key = grid_key(rows)
        cells, scale = steps_cells(rows, key), lr_scale(rows, key)
        rep.cache["steps"] = Steps(rows, key, cells, scale, *analyse_steps(cells, scale), bootstrap_steps(cells, scale),
                          one(rows, "target_val_acc"), one(rows, "lr_base_size"), one(rows, "train_size")) \
            if cells else None
    return rep.cache["steps"]


def fastest_cells(st):
    """Per batch, the grid cell whose runs all reached the target in the fewest mean seconds of training ->
    {batch: (grid lr, {seed: seconds}, runs)} (Shallue et al.'s best trial, in seconds)."""
    out = {}
    for b, lrs in st.cells.items():
        best = None
        for lr in sorted(lrs):
            runs = completed(where(st.rows, **{B: b, st.key: lr}))
            secs = {r["seed"]: r["target/train_s"] for r in runs if r["status"] == "reached_target"
                    and is_number(r.get("target/train_s"))}
            if runs and len(secs) == len(runs) and (best is None or np.mean(list(secs.values())) < best[0]):
                best = (np.mean(list(secs.values())), lr, secs, runs)
        if best:
            out[b] = best[1:]
    return out


def section_steps(rep):
    st = steps_analysis(rep)
    if st is None:
        return
    (s_min, b_crit), key, target = st.fit, st.key, num(st.target)
    batches, grid = list(st.per_batch), sorted({lr for lrs in st.cells.values() for lr in lrs})
    table = []
    for b in batches:
        row = [fmt_key(b)]
        for lr in grid:
            updates = list(st.cells[b].get(lr, {}).values())
            reached = [u for u in updates if math.isfinite(u)]
            row.append("n/a" if not updates else
                       f"{fmt(np.mean(reached), 1) if reached else '–'} ({len(reached)}/{len(updates)})")
        table.append(row)
    rep.table("steps", [B, *[f"{key} {lr:g}" for lr in grid]], table)

    lr_rule = f"best lr = lr_base × B/{num(st.size)}" if key == "lr_base" else "best lr"
    head = [B, f"best {key} (fit in log lr)", "resamples with an optimum in the grid", lr_rule,
            f"updates to {target} (grid best)", f"examples to {target}"]
    table = []
    for b in batches:
        lr_b, s = st.per_batch[b]
        lr_boot = [p[b][0] for p, _, _ in st.boot]
        table.append([fmt_key(b), fmt_interval(lr_b, *percentile_interval(lr_boot), 3), share_defined(lr_boot),
                      fmt(lr_b * st.scale[b], 4),
                      fmt_interval(s, *percentile_interval([p[b][1] for p, _, _ in st.boot]), 1), fmt(s * b, 0)])
    rep.table("steps_best", head, table)
    cis = {name: percentile_interval([get(x) for x in st.boot]) for name, get in (
        ("s_min", lambda x: x[1][0]), ("b_crit", lambda x: x[1][1]), ("slope", lambda x: x[2]))}
    slope_share = share_defined([x[2] for x in st.boot])
    rep.table("critical_batch", ["quantity", "estimate [95% bootstrap interval]"], [
        ["S_min (updates)", fmt_interval(s_min, *cis["s_min"], 1)],
        ["B_crit (images)", fmt_interval(b_crit, *cis["b_crit"], 0)],
        ["E_min = S_min × B_crit (images)", fmt(s_min * b_crit, 0)],
        ["slope of log lr* on log B", fmt_interval(st.slope, *cis["slope"], 2) + f" (defined in {slope_share} of "
                                                                                 "resamples)"]])
    residuals = table_lr_rules(rep, st)
    fast = fastest_cells(st)
    table_time_to_result(rep, st, fast)
    figure_steps(rep, st, fast)
    text_steps(rep, st, cis)
    text_time_to_result(rep, st, fast)
    text_rules(rep, st, cis, slope_share, residuals)


def table_lr_rules(rep, st):
    """Which scaling rule fits the optima: each rule's shape with its constant fitted, residual in decades.
    -> {rule: rms residual}."""
    lrs = {b: st.per_batch[b][0] * st.scale[b] for b in st.per_batch if math.isfinite(st.per_batch[b][0])}
    xs, n = np.array(list(lrs)), st.train_size
    ys = np.log10(list(lrs.values())) if lrs else np.array([])
    shapes = [("least-squares fit", "B^slope", np.log10(xs) * st.slope),
              ("linear (Goyal et al. 2017)", "B", np.log10(xs)),
              ("square root (Hoffer et al. 2017)", "√B", 0.5 * np.log10(xs)),
              (f"Smith & Le 2018, g = lr N/B held fixed, N = {num(n)}", "B/(N − B)", np.log10(xs / (n - xs)))]
    table, residuals = [], {}
    for rule, form, shape in shapes:
        if len(ys) >= 2:
            resid = ys - shape - np.mean(ys - shape)
            residuals[rule.split(" (")[0].split(",")[0]] = float(np.sqrt(np.mean(resid ** 2)))
            table.append([rule, form, fmt(stats.linregress(np.log10(xs), shape).slope, 2),
                          fmt(float(np.sqrt(np.mean(resid ** 2))), 3)])
    rep.table("lr_rules", ["rule", "lr* ∝", "slope", "rms residual (decades of lr)"], table)
    return residuals


def quickest(fast):
    return min(fast, key=lambda b: np.mean(list(fast[b][1].values())))


def table_time_to_result(rep, st, fast):
    target = num(st.target)
    batches = sorted(fast)
    if not batches:
        rep.table("time_to_result", [B, f"seconds to {target} (training steps)"], [])
        return
    quickest_b = quickest(fast)
    head = [B, f"fastest {st.key}", f"seconds to {target} (training steps)", f"updates to {target}",
            f"examples to {target}", f"− batch {fmt_key(quickest_b)} (paired, s)"]
    rep.table("time_to_result", head, [
        [fmt_key(b), f"{fast[b][0]:g}", fmt_ci(mean_ci(fast[b][1].values()), 2),
         fmt_ci(mean_ci(values(fast[b][2], "target/updates")), 1),
         fmt_ci(mean_ci(values(fast[b][2], "target/examples")), 0),
         fmt_ci(paired(fast[b][1], fast[quickest_b][1]), 2) if b != quickest_b else ""] for b in batches])


def figure_steps(rep, st, fast):
    batches, target = list(st.per_batch), num(st.target)
    colors = dict(zip(batches, plt.cm.viridis(np.linspace(0, 0.9, len(batches))), strict=True))
    fig, axes = new_figure(2, 3, (16, 8))
    panel_updates_by_lr(axes[0], st, colors)
    s_min, b_crit = st.fit
    panel_by_batch(axes[1], st, colors, lambda b, u: u, (lambda x: s_min * (1 + b_crit / x), "S_min(1 + B_crit/B)"),
                   f"updates to val/acc {target}", "updates to the target")
    panel_by_batch(axes[2], st, colors, lambda b, u: u * b, (lambda x: s_min * (x + b_crit), "E_min(1 + B/B_crit)"),
                   f"examples to val/acc {target}", "examples to the target")
    panel_optimum_lr(axes[3], st, colors)
    for b in sorted(fast):
        seeds_ci(axes[4], b, fast[b][1].values(), colors[b], f"batch {fmt_key(b)}",
                 label=once(axes[4], "mean, 95% interval"))
    batch_axis(axes[4], batches)
    axes[4].set(xlabel="batch size (images)", ylabel=f"seconds of training to val/acc {target}",
                title=f"time to the target at each batch's fastest {st.key}")
    axes[5].legend(*axes[0].get_legend_handles_labels(), loc="center", fontsize=8, frameon=False)
    axes[5].axis("off")
    for ax in axes[:5]:
        ax.title.set_fontsize(9)
        if ax is not axes[0]:
            legend(ax, fontsize=7)
    n = listing(sorted({len(s) for lrs in st.cells.values() for s in lrs.values()}))
    fig.suptitle(f"{design(st.rows, 'optimizer', 'scheduler')}, precise BN, target val/acc {target}; {n} seeds per "
                 "cell", fontsize=9)
    rep.save(fig, "steps")


def panel_updates_by_lr(ax, st, colors):
    """Updates to the target against the grid's lr, one line per batch size: each seed, each cell's mean with its
    95% interval, the fitted optimum dotted."""
    for b, color in colors.items():
        grid = sorted(st.cells[b])
        means = [seeds_ci(ax, lr, list(st.cells[b][lr].values()), color, f"batch {fmt_key(b)}", log=True,
                          spread=0.04, meaning="never reached the target") for lr in grid]
        ax.plot(grid, means, color=color, lw=1, label=f"batch {fmt_key(b)}")
        if math.isfinite(st.per_batch[b][0]):
            ax.axvline(st.per_batch[b][0], color=color, ls=":", lw=1, label=once(ax, "fitted optimum"))
            record(ax, f"batch {fmt_key(b)}: fitted optimum", st.per_batch[b][0], None)
    lr_axis(ax, sorted({lr for lrs in st.cells.values() for lr in lrs}))
    y_scale(ax)
    ax.set(xlabel=f"{st.key}" + (f" (lr at {num(st.size)} images; lr = lr_base × B/{num(st.size)})"
                                 if st.key == "lr_base" else ""), ylabel=f"updates to val/acc {num(st.target)}",
           title="each seed; mean with 95% interval; dotted: fitted optimum")


def panel_by_batch(ax, st, colors, get, fit, ylabel, title):
    """Per batch, get(batch, updates) of the grid-best cell's seeds and of the estimate, with its bootstrap
    interval; fit: (the fitted curve, its label)."""
    for b, color in colors.items():
        best = min(st.cells[b], key=lambda lr, b=b: cell_mean(list(st.cells[b][lr].values())))
        seeds_ci(ax, b, [get(b, u) for u in st.cells[b][best].values()], color, f"batch {fmt_key(b)}",
                 interval=False, meaning="never reached the target")
        estimate(ax, b, get(b, st.per_batch[b][1]), percentile_interval([get(b, p[b][1]) for p, _, _ in st.boot]),
                 "k", f"batch {fmt_key(b)}: grid best, 95% bootstrap",
                 label=once(ax, "grid best, 95% bootstrap interval"))
    if math.isfinite(st.fit[1]):
        span = np.geomspace(min(colors), max(colors), 50)
        line(ax, span, fit[0](span), "k--", fit[1])
    batch_axis(ax, list(colors))
    y_scale(ax)
    ax.set(xlabel="batch size (images)", ylabel=ylabel, title=title)


def panel_optimum_lr(ax, st, colors):
    """The fitted optimum lr per batch with its bootstrap interval, each seed's fewest-updates lr, and the slopes
    of the fit and of the linear and square-root rules."""
    for b, color in colors.items():
        per_seed = {}
        for lr, s in st.cells[b].items():
            for seed, u in s.items():
                per_seed.setdefault(seed, []).append((u, lr))
        seeds_ci(ax, b, [min(v)[1] * st.scale[b] for v in per_seed.values()], color, f"batch {fmt_key(b)}",
                 interval=False)
        estimate(ax, b, st.per_batch[b][0] * st.scale[b], percentile_interval(
            [p[b][0] * st.scale[b] for p, _, _ in st.boot]), "k", f"batch {fmt_key(b)}: fitted optimum lr",
            label=once(ax, "optimum (fit in log lr), 95% bootstrap"))
    lrs = {b: st.per_batch[b][0] * st.scale[b] for b in colors if math.isfinite(st.per_batch[b][0])}
    if len(lrs) >= 2:
        span = np.geomspace(min(lrs), max(lrs), 50)
        for power, style, series in ((st.slope, "--", f"fit: slope {st.slope:.2f}"), (1, ":", "slope 1"),
                                     (0.5, "-.", "slope 0.5")):
            c = np.exp(np.mean([math.log(lrs[b]) - power * math.log(b) for b in lrs]))
            line(ax, span, c * span ** power, style, series, color="gray" if power != st.slope else "k")
    batch_axis(ax, list(colors))
    ax.set_yscale("log")
    ax.set(xlabel="batch size (images)", ylabel="lr", title="optimum lr; dots: each seed's fewest-updates lr")


def text_steps(rep, st, cis):
    batches, target, key = list(st.per_batch), num(st.target), st.key
    (s_min, b_crit), boot = st.fit, st.boot
    rows = st.rows
    steps_of = {b: st.per_batch[b][1] for b in batches}
    grid = sorted({lr for lrs in st.cells.values() for lr in lrs})
    step = f" in steps of about ×{float(np.exp(np.median(np.diff(np.log(grid))))):.1f}" if len(grid) > 1 else ""
    rep.text("steps_design", (
        f"As Shallue et al. (2019) measure it: for {design(rows, B)}, {design(rows, 'optimizer', 'momentum')} at "
        f"a {said(rows, 'scheduler')} lr over a grid{step}, "
        f"{listing(sorted({len(s) for lrs in st.cells.values() for s in lrs.values()}))} seeds per cell; each run "
        f"is evaluated with precise BN {numbers(distinct(rows, 'evals_per_epoch'))} times an epoch and stops at "
        f"the first evaluation with validation accuracy ≥ {target} (`--target_val_acc {target} --stop_at_target`), "
        f"or after {numbers(distinct(rows, 'epochs'))} epochs."
        + (f" The grid is in `lr_base`, the lr at {num(st.size)} images (lr = lr_base × B/{num(st.size)}, with B "
           "the global batch, train.py's rule), so it follows linear scaling and the fit below measures the "
           "departure from it." if key == "lr_base" else "")), f"Updates to {target} per cell (mean over the seeds "
        "that reached it; reached/runs):")
    pairs = []
    for b1, b2 in zip(batches, batches[1:], strict=False):
        k = b2 / b1
        low, high = percentile_interval([p[b1][1] / p[b2][1] for p, _, _ in boot])
        word = ("perfect scaling: the interval includes " + num(k) if inside(k, (low, high)) else
                "no fewer updates: the interval includes 1" if inside(1, (low, high)) else
                "diminishing returns" if 1 < low and high < k else
                "more than perfect scaling" if low > k else "more updates")
        pairs.append((b1, b2, word, (low, high)))
        rep.finding("4a", f"From batch {num(b1)} to {num(b2)} the updates to {target} fall "
                          f"{fmt_interval(steps_of[b1] / steps_of[b2], low, high, 1)} times ({word.split(':')[0]})",
                    not inside(1, (low, high)))
    waste = [f"so batch {num(b2)} spends {fmt(steps_of[b2] * b2 / (steps_of[b1] * b1), 1)} times the examples of "
             f"batch {num(b1)} for no fewer updates" for b1, b2, w, _ in pairs if w.startswith("no fewer")]
    falls = "; ".join(
        f"from batch {num(b1)} to {num(b2)} they fall {fmt_interval(steps_of[b1] / steps_of[b2], *interval, 1)} times "
        f"for a {num(b2 / b1)} times larger batch ({w})" for b1, b2, w, interval in pairs)
    rep.text("steps_answer", (
        f"Updates to {target} at each batch size's best cell, batch against the one before: {falls}"
        + (f", {waste[-1]}" if waste else "") + "." if pairs else f"Fewer than two batch sizes reach {target}."), (
        f"The fit gives **B_crit = {fmt(b_crit, 0)} images [{fmt(cis['b_crit'][0], 0)}, {fmt(cis['b_crit'][1], 0)}]**"
        f", S_min = {fmt(s_min, 1)} updates and E_min = {fmt(s_min * b_crit, 0)} examples "
        f"({fmt(s_min * b_crit / st.train_size, 2)} epochs of the {num(st.train_size)} training images). For MNIST "
        "McCandlish et al. (2018) report B_crit ≈ 200."))
    spans_by_sweep = [f"`{s}` runs {key} {numbers(distinct(rep.rows(s), key))} at batch "
                      f"{numbers(distinct(rep.rows(s), B))}" for s in STEPS if rep.rows(s)]
    shares = [defined([p[b][0] for p, _, _ in boot]) for b in batches]
    rep.text("steps_grid", (
        f"{'; '.join(spans_by_sweep)}. The optimum lies inside the grid in {pct(min(shares))} to "
        f"{pct(max(shares))} of the bootstrap resamples, by batch size."))


def text_time_to_result(rep, st, fast):
    target, batches = num(st.target), sorted(fast)
    if len(batches) < 2:
        rep.text("time_to_result", f"Fewer than two batch sizes have a cell whose every run reached {target}.")
        return
    first = quickest(fast)
    small, big = batches[0], batches[-1]
    ends, ok = compare(f"batch {num(big)}", f"batch {num(small)}", diff(fast[big][1], fast[small][1]), "slower than",
                       "faster than", 2, units=" s")
    rep.finding("4a", f"In seconds to {target}, {ends}", ok)
    slowest = [compare(f"batch {num(b)}", f"batch {num(first)}", diff(fast[b][1], fast[first][1]), "slower than",
                       "faster than", 2, units=" s") for b in (small, big) if b != first]
    for sentence, ok in slowest:
        rep.finding("4a", f"In seconds to {target}, {sentence}", ok)
    rep.text("time_to_result", (
        f"In seconds of training steps to {target} (evaluations and start-up excluded), at each batch size's "
        f"fastest {st.key}: batch {num(first)} gets there first ({mean_of(fast[first][1], 2)} s), and "
        f"{listing(s for s, _ in slowest)}. Between the ends of the range, {ends}: batch {num(big)} needs "
        f"{fmt(np.mean(values(fast[big][2], 'target/updates')), 1)} updates against "
        f"{fmt(np.mean(values(fast[small][2], 'target/updates')), 1)}, but each costs more (1b)."))


# ---------------------------------------------------------------- Q1: time to a result (1d)

TIME_SWEEPS = ("lab1_time_to_result", "lab1_time_to_result_large")  # one run at a time, num_threads fixed
TIME_TARGETS = (0.95, 0.97, 0.98)  # val/acc targets read from each run's history


def readable(rows, wanted):
    """The targets of wanted that every run's history can say, none above the lowest target the runs were given
    (where --stop_at_target ends them), and that target itself: a sweep run at another target labels itself with
    its own."""
    top = min(distinct(rows, "target_val_acc"), default=max(wanted))
    return tuple(sorted({t for t in wanted if t <= top} | {top}))


def reached(rows, history, target):
    """run_id -> the history row of the run's first evaluation with val/acc >= target, or None where the run ended
    without reaching it (its time to the target is then infinite). Runs that ended on purpose or diverged; a run
    that stopped at a lower target is left out: its history ends before it could say."""
    points = {}
    for h in history:
        if is_number(h.get("val/acc")):
            points.setdefault(h["run_id"], []).append(h)
    out = {}
    for r in rows:
        if r["status"] not in (*runfiles.COMPLETED, runfiles.DIVERGED) or (
                r["status"] == runfiles.REACHED_TARGET and r.get("target_val_acc", math.inf) < target - 1e-9):
            continue
        first = [h for h in sorted(points.get(r["run_id"], []), key=lambda h: h["update"]) if h["val/acc"] >= target]
        out[r["run_id"]] = first[0] if first else None
    return out


def to_target(rows, history, target, metric):
    """{batch: {seed: metric at the first evaluation at or above target}}, infinite for a run that never got
    there."""
    first = reached(rows, history, target)
    out = {}
    for r in rows:
        if r["run_id"] in first:
            point = first[r["run_id"]]
            out.setdefault(r[B], {})[r["seed"]] = point[metric] if point else math.inf
    return out


def success(xs):
    """'k/n': how many of the values are finite (runs that reached the target)."""
    xs = list(xs)
    return f"{sum(map(math.isfinite, xs))}/{len(xs)}"


def fmt_median(xs, digits=1):
    """Median [lowest, highest] (n), infinite values (runs that never reached the target) included as ∞."""
    xs = sorted(xs)
    if not xs:
        return "n/a (n=0)"
    return f"{fmt(float(np.median(xs)), digits)} [{fmt(xs[0], digits)}, {fmt(xs[-1], digits)}] (n={len(xs)})"


def median(xs):
    return float(np.median(list(xs))) if xs else math.nan


def compare_to_target(a, b, da, db, more="slower than", less="faster than", digits=2, units=" s",
                      later="later than"):
    """compare() of per-seed values to a target ({seed: value} each), a - b; where a run never got there its seed
    has no finite difference, so the sentence counts the seeds in which a is `later` instead, and resolves
    nothing."""
    pairs = [(da[s], db[s]) for s in sorted(da.keys() & db.keys())]
    if all(map(math.isfinite, (v for p in pairs for v in p))):
        return compare(a, b, {i: x - y for i, (x, y) in enumerate(pairs)}, more, less, digits, units=units)
    never = (sum(not math.isfinite(x) for x, _ in pairs), sum(not math.isfinite(y) for _, y in pairs))
    count = sum(x > y for x, y in pairs)
    return (f"{a} is {later} {b} in {seeds(count, len(pairs))} ({a} never gets there in {never[0]} and {b} in "
            f"{never[1]} of them: no interval with an infinite value)"), False


def section_time_to_result(rep):
    rows, history = rep.rows(*TIME_SWEEPS), rep.history(*TIME_SWEEPS)
    batches = distinct(completed(rows), B)
    if not batches:
        return
    targets = readable(rows, TIME_TARGETS)
    got = {(t, m): to_target(rows, history, t, m) for t in targets for m in ("time/train_s", "examples",
                                                                                  "update")}
    head = [B, "lr"] + [f"{t:g}: {part}" for t in targets for part in (
        "reached", "seconds, median [range]", "examples, median [range]")]
    rep.table("time_to_targets", head, [
        [fmt_key(b), said(where(rows, **{B: b}), "lr")] + [
            cell for t in targets for cell in (
                success(got[t, "time/train_s"].get(b, {}).values()),
                fmt_median(got[t, "time/train_s"].get(b, {}).values(), 2),
                fmt_median(got[t, "examples"].get(b, {}).values(), 0))] for b in batches])
    figure_time_to_result(rep, rows, got, batches, targets)
    text_time_to_targets(rep, rows, got, batches, targets)


def figure_time_to_result(rep, rows, got, batches, targets):
    """Seconds (top) and examples (bottom) to each target against the batch, log-log: each seed, a run that never
    got there on the top edge, the geometric mean with its 95% interval where every run got there."""
    fig, axes = new_figure(2, len(targets), (5 * len(targets), 7.5))
    for col, t in enumerate(targets):
        for row, (metric, ylabel) in enumerate((("time/train_s", "seconds of training (time/train_s)"),
                                                ("examples", "examples (images trained)"))):
            ax = axes[row * len(targets) + col]
            per_batch = got[t, metric]
            means = [seeds_ci(ax, b, per_batch.get(b, {}).values(), "tab:blue", f"batch {fmt_key(b)}", log=True,
                              meaning="never reached the target", label=once(ax, "geometric mean, 95% interval"),
                              who="each seed") for b in batches]
            ax.plot(batches, means, color="tab:blue", lw=1)
            medians = [(b, median(per_batch[b].values())) for b in batches if b in per_batch]
            medians = [(b, m) for b, m in medians if math.isfinite(m)]
            if medians:
                line(ax, *zip(*medians, strict=True), "k--", "median (a run that never got there at ∞)", lw=0.8)
            batch_axis(ax, batches)
            log_y(ax)
            ax.set(xlabel="batch size (images)", ylabel=ylabel, title=f"to val/acc {t:g}")
            ax.title.set_fontsize(9)
            legend(ax, fontsize=7)
    fig.suptitle(f"{design(rows, 'optimizer', 'scheduler')} at the lr of 1d's table, {len(distinct(rows, 'seed'))} "
                 f"seeds; {listing(distinct(rows, 'device'))}, one run at a time", fontsize=9)
    rep.save(fig, "time_to_targets")


def text_time_to_targets(rep, rows, got, batches, targets):
    small, big = batches[0], batches[-1]
    parts = [f"`{s}` ({design(rep.rows(s), B, grid_key(rep.rows(s)), 'epochs')})" for s in TIME_SWEEPS
             if rep.rows(s)]
    size = only(rows, "lr_base_size")
    rep.text("time_to_targets_design", (
        f"{listing(parts)}: {design(rows, 'optimizer', 'momentum', 'scheduler', 'seed')}, each batch size at an "
        "lr read from 4a's fitted optima, as the sweep files' comments explain"
        + (f" (lr_base is the lr at {num(size)} images: lr = lr_base × B/{num(size)})" if size and any(
            "lr_base" in r for r in rows) else "")
        + f". Each run is evaluated with precise BN {said(rows, 'evals_per_epoch')} times an epoch and stops at the "
        f"first evaluation with val/acc ≥ {said(rows, 'target_val_acc')} or when its epochs run out. For each "
        f"target ({numbers(targets)}) a run's time is `time/train_s` at its first evaluation at or above it: "
        "seconds of training steps only (no evaluation, precise BN or start-up), so it moves in steps of one "
        "evaluation interval; its examples are the images trained by then. A run that never gets there counts, "
        "as an infinite time: the table gives the share that got there and medians with ∞ included. Machine: "
        f"{listing(f'`{d}`' for d in distinct(rows, 'device'))} (`device`), runs one at a time (sweep.py), "
        f"torch at num_threads {said(rows, 'num_threads')}."))
    paragraphs = []
    for t in targets:
        secs, examples = got[t, "time/train_s"], got[t, "examples"]
        medians = {b: median(secs.get(b, {}).values()) for b in batches}
        first = min(batches, key=lambda b: (medians[b], b))
        if not math.isfinite(medians[first]):
            paragraphs.append(f"To {num(t)}: no batch size gets there in half its runs.")
            continue
        ends = [compare_to_target(f"batch {num(b)}", f"batch {num(first)}", secs[b], secs[first])
                for b in (small, big) if b != first]
        span, ok = compare_to_target(f"batch {num(big)}", f"batch {num(small)}", secs[big], secs[small])
        rep.finding("1d", f"In seconds of training to val/acc {num(t)}, {span}", ok)
        for sentence, ok in ends:
            rep.finding("1d", f"In seconds of training to val/acc {num(t)}, {sentence}", ok)
        ex = {b: median(examples.get(b, {}).values()) for b in batches}
        pairs = list(zip(batches, batches[1:], strict=False))
        steps = [compare_to_target(f"batch {num(b)}", f"batch {num(a)}", examples[b], examples[a], "above",
                                   "below", 0, "", "above") for a, b in pairs]
        up = [f"{num(a)} to {num(b)}" for (a, b), (sentence, ok) in zip(pairs, steps, strict=True)
              if ok and " above " in sentence]
        more, ok = compare_to_target(f"batch {num(big)}", f"batch {num(small)}", examples[big], examples[small],
                                     "above", "below", 0, " examples", "above")
        rep.finding("1d", f"In examples to val/acc {num(t)}, {more}", ok)
        paragraphs.append(
            f"To {num(t)}: batch {num(first)} has the lowest median time (median {fmt(medians[first], 2)} s, "
            f"{success(secs[first].values())} runs got there); {listing(s for s, _ in ends)}. Between the ends of "
            f"the range, {span}. Median examples to {num(t)} are "
            + ", ".join(f"{fmt(ex[b], 0)}" for b in batches) + f" at batch {numbers(batches)}; {more}. Between "
            f"neighbouring sizes, paired by seed, they rise beyond noise in {len(up)} of the {len(steps)} steps"
            + (f" ({listing(up)})." if up else "."))
    rep.text("time_to_targets_answer", *paragraphs)


# ---------------------------------------------------------------- Q4, continued: the lr scaling rules

def text_rules(rep, st, cis, slope_share, residuals):
    batches, key, boot = list(st.per_batch), st.key, st.boot
    opt = {b: st.per_batch[b][0] for b in batches}
    lr_cis = {b: percentile_interval([p[b][0] for p, _, _ in boot]) for b in batches}
    verdicts = [f"slope {power} ({rule}) is {'inside' if inside(power, cis['slope']) else 'outside'} the interval"
                for power, rule in ((0.5, "square-root scaling"), (1, "linear scaling"))]
    if len(batches) < 2 or not residuals:
        rep.text("rules_answer", f"The optimum lr, in {key} units, is {listing(fmt(opt[b], 3) for b in batches)} at "
                                 f"batch {numbers(batches)}: too few optima for a slope.")
        return
    for power, rule in ((0.5, "square-root scaling"), (1, "linear scaling")):
        rep.finding("4b", f"The lr slope {fmt_interval(st.slope, *cis['slope'], 2)} "
                          f"{'excludes' if not inside(power, cis['slope']) else 'includes'} {power} ({rule})",
                    not inside(power, cis["slope"]))
    last, before = batches[-1], batches[-2]
    order = apart(lr_cis[last], lr_cis[before])
    rep.text("rules_answer", (
        f"The optimum lr, in {key} units, is {listing(fmt(opt[b], 3) for b in batches)} at batch "
        f"{numbers(batches)}. The fitted slope of log lr* on log B over the {len(batches)} batch sizes is "
        f"**{fmt_interval(st.slope, *cis['slope'], 2)}** (the interval is over the {slope_share} of resamples in "
        f"which every batch size has an optimum inside its grid): {listing(verdicts)}. By rms residual the rules "
        f"rank {ranked(residuals)}. At batch {num(last)} the optimum is "
        + ({1: "above", -1: "below", 0: "within the interval of"}[order]
           + f" the one at batch {num(before)} ({fmt_interval(opt[last], *lr_cis[last], 3)} against "
             f"{fmt_interval(opt[before], *lr_cis[before], 3)}"
           + (": their intervals do not overlap)" if order else ")")) + "."))


def section_warmup(rep):
    st, warm_rows = steps_analysis(rep), rep.rows("lab1_warmup")
    key = grid_key(warm_rows)
    warm = steps_cells(warm_rows, key)
    if not warm or st is None:
        return
    (b, _), *_ = warm.items()
    steps = {b: st.cells.get(b, {})}
    target, epochs = num(one(warm_rows, "target_val_acc")), one(warm_rows, "warmup_epochs")
    per_epoch = one([{"update": round(r["update"] / r["epoch"])} for r in completed(warm_rows)], "update")
    lrs = sorted(set(warm[b]) | set(steps[b]))
    head = [key, f"updates to {target}, no warm-up", f"with {num(epochs)} epochs of warm-up"]

    def describe(cells, lr):
        ups = list(cells.get(b, {}).get(lr, {}).values())
        reached = [u for u in ups if math.isfinite(u)]
        return "not run" if not ups else f"{fmt(np.mean(reached), 1) if reached else '–'} ({len(reached)}/{len(ups)})"

    table = [[f"{lr:g}", describe(steps, lr), describe(warm, lr)] for lr in lrs]
    optimum = {}
    for name, cells in (("no warm-up", steps), ("warm-up", warm)):
        scale = {b: 1.0}
        (per, _, _), boot = analyse_steps(cells, scale), bootstrap_steps(cells, scale, BOOTSTRAP // 4)
        optimum[name] = per[b]
        table.append([f"optimum, {name}", fmt_interval(per[b][0], *percentile_interval([p[b][0] for p, _, _ in boot]),
                                                       3), f"fewest updates {fmt(per[b][1], 1)}"])
    rep.table("warmup", head, table)

    rep.text("warmup_design", (
        f"`lab1_warmup`: batch {num(b)} again, with {num(epochs)} epochs ({num(epochs * per_epoch)} updates) of "
        "linear warm-up (Goyal et al. 2017):"))
    both = [lr for lr in lrs if lr in warm[b] and lr in steps[b]]
    claims = []
    for lr in both:
        finite = {s: u for s, u in warm[b][lr].items()
                  if math.isfinite(u) and math.isfinite(steps[b][lr].get(s, math.inf))}
        if finite:
            claims.append(compare(f"{key} {lr:g} with warm-up", "without", diff(finite, steps[b][lr]), "more than",
                                "fewer than", 1, units=" updates")[0])
    never = [f"{lr:g}" for lr in sorted(warm[b]) if not any(map(math.isfinite, warm[b][lr].values()))]
    budget = one(warm_rows, "epochs") * per_epoch
    lowest_lr = min(warm[b])
    fewest = min(warm[b], key=lambda lr: cell_mean(list(warm[b][lr].values())))
    rep.text("warmup_answer", (
        f"Updates to {target}, paired by seed where both runs reached it: {'; '.join(claims)}."
        + (f" With warm-up, {key} {listing(never)} never reaches {target} within {num(budget)} updates."
           if never else "")
        + (f" The fewest updates with warm-up are at the grid's lowest {key} ({lowest_lr:g}), so its optimum is at or "
           "below it (not bracketed: n/a)." if fewest == lowest_lr and not math.isfinite(optimum["warm-up"][0]) else "")
        + f" The {num(epochs * per_epoch)} warm-up updates are {pct(epochs * per_epoch / optimum['no warm-up'][1])} of "
          f"the fewest updates without warm-up ({fmt(optimum['no warm-up'][1], 1)})."))


def max_epoch(points):
    return max(h["epoch"] for h in points)


def run_sums(points, runs, keep):
    """Per run, the sums of tr(Σ) and ‖G‖² over its points that keep() selects -> array (runs, 2)."""
    return np.array([[sum(h[k] for h in points if h["run_id"] == r and keep(h))
                      for k in ("noise/trace_sigma", "noise/grad_sq")] for r in runs])


def ratio(s):
    """B_simple from sums (tr(Σ), ‖G‖²): unbounded where no signal is resolved (‖G‖² <= 0)."""
    return s[0] / s[1] if s[1] > 0 else math.inf


def pooled_b_simple(points, runs, keep):
    """B_simple = sum tr(Σ) / sum ‖G‖² over the selected points of every run (a ratio of means, as McCandlish et
    al. pool them), with a 95% interval from resampling the runs. Infinite where the pooled ‖G‖² is not
    positive."""
    sums = run_sums(points, runs, keep)
    rng = np.random.default_rng(0)
    boot = [ratio(sums[rng.integers(0, len(runs), len(runs))].sum(axis=0)) for _ in range(BOOTSTRAP)]
    low, high = np.percentile(boot, [2.5, 97.5], method="nearest")  # no interpolation towards an infinity
    return ratio(sums.sum(axis=0)), (float(low), float(high))


def section_noise_scale(rep):
    rows, history = rep.rows("lab1_noise_scale"), rep.history("lab1_noise_scale")
    points = [h for h in history if is_number(h.get("noise/trace_sigma")) and is_number(h.get("noise/grad_sq"))]
    if not points:
        return
    st = steps_analysis(rep)
    b_crit = (st.fit[1], percentile_interval([f[1] for _, f, _ in st.boot])) if st else (math.nan, (math.nan,) * 2)
    head = ["epoch", "runs averaged", "mean tr(Σ)", "mean ‖G‖²", "B_simple = ratio of the means"]
    table, curve_points = [], []
    for e in distinct(points, "epoch"):
        here = [h for h in points if h["epoch"] == e]
        trace, grad = np.mean([h["noise/trace_sigma"] for h in here]), np.mean([h["noise/grad_sq"] for h in here])
        curve_points.append((e, ratio((trace, grad))))
        table.append([f"{e:g}", str(len(here)), fmt(trace, 3), fmt(grad, 4), fmt(curve_points[-1][1], 0)])
    rep.table("noise_scale", head, table)

    # Over whole runs, and over each epoch: each run's sums, pooled as a ratio of means; runs resampled
    runs = sorted({h["run_id"] for h in points})
    epochs = range(1, math.ceil(max_epoch(points)) + 1)
    pooled = {label: pooled_b_simple(points, runs, keep) for label, keep in [("whole runs", lambda h: True)] + [
        (f"epoch {e}", lambda h, e=e: e - 1 < h["epoch"] <= e) for e in epochs]}
    target = num(st.target) if st else "the target"
    table = [[f"B_simple over {label}, ratio of means (n={len(runs)} runs, 95% bootstrap)",
              fmt_interval(value, *interval, 0)] for label, (value, interval) in pooled.items()]
    table += [["per run, whole run", ", ".join(fmt(ratio(s), 0) for s in run_sums(points, runs, lambda h: True))],
              [f"B_crit from steps to {target} (lab1_steps)", fmt_interval(b_crit[0], *b_crit[1], 0)],
              ["test/acc of these runs", fmt_ci(mean_ci(values(rows, "test/acc")))]]
    rep.table("noise_scale_run", ["estimate", "value"], table)
    figure_noise_scale(rep, rows, points, runs, epochs, pooled, curve_points, b_crit, target)
    text_noise_scale(rep, rows, pooled, epochs, b_crit, st)


def figure_noise_scale(rep, rows, points, runs, epochs, pooled, curve_points, b_crit, target):
    fig, (ax,) = new_figure(size=(7, 5.5))
    finite = [(e, v) for e, v in curve_points if math.isfinite(v)]
    line(ax, *zip(*finite, strict=True), "ko-", f"per evaluation point, ratio of means (n={len(runs)} runs)", ms=3,
         lw=1)
    for e, v in curve_points:
        if not math.isfinite(v):
            off_scale(ax, e, v, "k", "per evaluation point", "no signal resolved (‖G‖² ≤ 0)")
    for e in epochs:
        per_run = [ratio(s) for s in run_sums(points, runs, lambda h, e=e: e - 1 < h["epoch"] <= e)]
        seeds_ci(ax, e - 0.5, per_run, "tab:blue", f"epoch {e}: each run", log_x=False, spread=0.05, interval=False,
                 meaning="a run with no signal resolved", who="per epoch, each run (seed)")
        estimate(ax, e - 0.5 + 0.15, *pooled[f"epoch {e}"], "tab:blue", f"epoch {e}: pooled, 95% bootstrap",
                 label=once(ax, "per epoch, pooled over runs (95% bootstrap)"))
    if math.isfinite(b_crit[0]):
        ax.axhline(b_crit[0], color="tab:red", ls="--", label=f"B_crit from steps to {target} ({b_crit[0]:.0f})")
        ax.axhspan(*b_crit[1], color="tab:red", alpha=0.1, lw=0, label="its 95% bootstrap interval")
        record(ax, "B_crit, 95% bootstrap", None, b_crit[0], *b_crit[1])
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="B_simple (images)",
           title=f"gradient noise scale, batch {said(rows, B)}, {said(rows, 'optimizer')} lr {said(rows, 'lr')}")
    legend_below(fig, ax, 2)
    rep.save(fig, "noise_scale")


def text_noise_scale(rep, rows, pooled, epochs, b_crit, st):
    value, interval = pooled["whole runs"]
    g, size, lr = one(rows, B), only(rows, "lr_base_size"), only(rows, "lr")
    rep.text("noise_scale_design", (
        f"`lab1_noise_scale`: batch {num(g)} (micro-batches of {said(rows, 'batch_size')}, accumulated "
        f"{said(rows, 'grad_accum_steps')} times) at lr {said(rows, 'lr')}"
        + (f" (lr_base {num(lr * size / g)} in 4a's units)" if size and lr else "")
        + f", {said(rows, 'optimizer')}, {said(rows, 'scheduler')} lr, {design(rows, 'epochs', 'seed')}. train.py "
          "estimates tr(Σ) and ‖G‖² at every update from the two gradient norms (McCandlish et al. 2018, "
          "appendix A.1); the report pools them as a ratio of means, per evaluation point over the runs, and over "
          "whole runs:"))
    order = apart(interval, b_crit[1])
    if math.isfinite(b_crit[0]):
        rep.finding("4d", f"B_simple over whole runs, {fmt_interval(value, *interval, 0)}, is "
                          f"{ {1: 'above', -1: 'below', 0: 'within the interval of'}[order]} B_crit from steps, "
                          f"{fmt_interval(b_crit[0], *b_crit[1], 0)}", bool(order))
    first, last = pooled["epoch 1"], pooled[f"epoch {epochs[-1]}"]
    rise = apart(last[1], first[1])
    rep.finding("4d", f"B_simple over epoch {epochs[-1]} ({fmt_interval(last[0], *last[1], 0)}) is "
                      f"{ {1: 'above', -1: 'below', 0: 'within noise of'}[rise]} its value over epoch 1 "
                      f"({fmt_interval(first[0], *first[1], 0)})", bool(rise))
    per_epoch = listing(f"{fmt_interval(v, *i, 0)} over epoch {e}" for e, (v, i) in
                        ((e, pooled[f"epoch {e}"]) for e in epochs))
    rep.text("noise_scale_answer", (
        f"The gradient noise scale over whole runs is **B_simple = {fmt_interval(value, *interval, 0)}**, "
        f"{fmt(value / b_crit[0], 1)} times the B_crit of 4a ({fmt_interval(b_crit[0], *b_crit[1], 0)}); "
        f"{'their intervals do not overlap' if order else 'their intervals overlap'}. McCandlish et al. (2018, "
        "Table 1) find B_simple above B_crit by 2–8 times for image classifiers (MNIST 900 against 200). Per epoch "
        f"it is {per_epoch} (∞: the pooled ‖G‖² is not positive, no signal resolved); epoch {epochs[-1]}'s "
        + ("interval lies above epoch 1's: B_simple rises during training, as they report." if rise == 1 else
           "interval and epoch 1's overlap: a change during training is not resolved.")), (
        "Per evaluation point the estimate is noisy and often has no resolved signal (the triangles in the figure); "
        "that is why it is pooled, never averaged as ratios. The estimate depends on the run's lr and batch "
        "(McCandlish et al.'s temperature), and train.py's estimator ignores the finite-population correction, "
        f"B/N = {pct(g / one(rows, 'train_size'))} here."))


# ---------------------------------------------------------------- Q4 in factors of 2, at three targets (4e)

STEPS_POW2 = (*STEPS, "lab1_steps_pow2", "lab1_steps_pow2_large")  # one grid per batch size, compared in lr
STEP_TARGETS = (0.9, 0.95, 0.97)  # val/acc targets read from each run's history (readable())


def lr_of(row):
    """The lr a run trained with, to 4 significant figures, so that a grid in lr_base and one in lr meet in one
    cell where they hold the same lr (lr_base 0.14 at batch 128 and lr 0.07)."""
    return float(f"{row['lr']:.4g}")


def target_runs(rows, history, targets):
    """{batch: {lr: {seed: (updates to each target)}}}: a run that never got there counts as infinitely many
    updates (not dropped); a run whose history cannot say for every target (it stopped at a lower one) is left
    out."""
    firsts = [reached(rows, history, t) for t in targets]
    cells = {}
    for r in rows:
        if all(r["run_id"] in f for f in firsts):
            cells.setdefault(r[B], {}).setdefault(lr_of(r), {})[r["seed"]] = tuple(
                f[r["run_id"]]["update"] if f[r["run_id"]] else math.inf for f in firsts)
    return cells


def power_law(batches, lrs):
    """log lr = log c + k log B by least squares -> (c, k, residual sum of squares in log lr)."""
    x, y = np.log(batches), np.log(lrs)
    k, log_c = np.polyfit(x, y, 1)
    return float(math.exp(log_c)), float(k), float(np.sum((y - log_c - k * x) ** 2))


def saturating(batches, lrs):
    """lr = lr_max / (1 + B_noise/B) (McCandlish et al. 2018's ε_opt(B)) by least squares in log lr -> (lr_max,
    B_noise, residual sum of squares). lr_max and B_noise are NaN where the fit runs to the edge of its bounds
    (B_noise beyond a thousand times the batch sizes fitted: no saturation seen; below a thousandth: no rise)."""
    bs, y = np.array(batches, float), np.log(lrs)

    def residuals(p):
        return p[0] - np.log1p(np.exp(p[1]) / bs) - y

    def jacobian(p):  # d/d log lr_max, d/d log B_noise
        share = np.exp(p[1]) / bs / (1 + np.exp(p[1]) / bs)
        return np.stack([np.ones_like(bs), -share], axis=1)

    low, high = math.log(bs.min() / 1e3), math.log(bs.max() * 1e3)
    start = [float(y.max()) + math.log(2), math.log(float(np.median(bs)))]
    fit = optimize.least_squares(residuals, x0=start, jac=jacobian, bounds=([-50, low], [50, high]))
    rss = float(np.sum(fit.fun ** 2))
    if not low + 0.01 < fit.x[1] < high - 0.01:
        return math.nan, math.nan, rss
    return float(math.exp(fit.x[0])), float(math.exp(fit.x[1])), rss


def aic(rss, n, params=2):
    """Akaike's criterion of a least-squares fit with Gaussian errors; lower is better."""
    return n * math.log(max(rss, 1e-12) / n) + 2 * params


class TargetFit(NamedTuple):
    """One target's estimates from the pooled grid."""
    per_batch: dict  # {batch: (lr* from the parabola in log lr, or NaN; fewest median updates)}
    critical: tuple  # (S_min, B_crit)
    fitted: tuple  # the batch sizes whose lr* both lr fits use
    power: tuple  # (c, k, rss)
    saturating: tuple  # (lr_max, B_noise, rss)
    delta_aic: float  # AIC of the power law minus that of the saturating form: > 0 favours saturation


def analyse_target(cells):
    """{batch: {lr: {seed: updates}}} of one target -> TargetFit. Each cell's value is the median over its seeds
    with a run that never got there at ∞; lr* is the vertex of a parabola in log lr through the finite medians
    (best_lr); both lr fits use the batch sizes that have an lr*, NaN where fewer than 3 do."""
    per_batch = {b: best_lr({lr: median(s.values()) for lr, s in sorted(lrs.items())})
                 for b, lrs in sorted(cells.items())}
    batches = list(per_batch)
    critical = fit_critical_batch(batches, [s for _, s in per_batch.values()])
    fitted = tuple(b for b in batches if math.isfinite(per_batch[b][0]))
    nan3 = (math.nan,) * 3
    if len(fitted) < 3:
        return TargetFit(per_batch, critical, fitted, nan3, nan3, math.nan)
    lrs = [per_batch[b][0] for b in fitted]
    power, sat = power_law(fitted, lrs), saturating(fitted, lrs)
    return TargetFit(per_batch, critical, fitted, power, sat, aic(power[2], len(fitted)) - aic(sat[2], len(fitted)))


def analyse_targets(runs):
    """{batch: {lr: {seed: (updates to each target)}}} -> [TargetFit for each target]."""
    count = min(len(u) for lrs in runs.values() for s in lrs.values() for u in s.values())
    return [analyse_target({b: {lr: {s: u[i] for s, u in seeds_.items()} for lr, seeds_ in lrs.items()}
                            for b, lrs in runs.items()}) for i in range(count)]


def bootstrap_targets(runs, reps=BOOTSTRAP):
    """analyse_targets over resamples of each cell's runs (with replacement; a run keeps its updates to every
    target); a fixed generator. In each resample the lr fits use the optima it has. -> list of its results."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(reps):
        sample = {b: {lr: dict(enumerate(list(s.values())[i] for i in rng.integers(0, len(s), len(s))))
                      for lr, s in lrs.items()} for b, lrs in runs.items()}
        out.append(analyse_targets(sample))
    return out


class Pow2(NamedTuple):
    """The six steps sweeps pooled, at each of its targets (computed once a report)."""
    rows: list
    targets: tuple  # STEP_TARGETS, as readable() from these runs
    runs: dict
    fits: list  # TargetFit per target
    boot: list  # per resample, a TargetFit per target


def pow2_analysis(rep):
    if "pow2" not in rep.cache:
        rows = rep.rows(*STEPS_POW2)
        targets = readable(rows, STEP_TARGETS)
        runs = target_runs(rows, rep.history(*STEPS_POW2), targets)
        fits = analyse_targets(runs) if runs else None
        rep.cache["pow2"] = Pow2(rows, targets, runs, fits, bootstrap_targets(runs, BOOTSTRAP // 2)) if runs else None
    return rep.cache["pow2"]


def boot_ci(p2, i, get):
    """95% percentile interval of get(TargetFit) over the resamples, at target i."""
    return percentile_interval([get(x[i]) for x in p2.boot])


def noise_window(rep, target=None):
    """B_simple pooled over each lab1_noise_scale run's evaluations up to its first at or above target (the
    whole run where it never got there, or with no target), as pooled_b_simple -> (value, interval, {run: last
    update})."""
    rows, history = rep.rows("lab1_noise_scale"), rep.history("lab1_noise_scale")
    points = [h for h in history if is_number(h.get("noise/trace_sigma")) and is_number(h.get("noise/grad_sq"))]
    first = reached(rows, history, target) if target is not None else {r["run_id"]: None for r in completed(rows)}
    runs = sorted({h["run_id"] for h in points} & first.keys())
    if not runs:
        return math.nan, (math.nan, math.nan), {}
    until = {r: first[r]["update"] if first[r] else math.inf for r in runs}
    value, interval = pooled_b_simple(points, runs, lambda h: h["update"] <= until.get(h["run_id"], -1))
    return value, interval, until


def fewest_updates(lrs):
    """{lr: {seed: updates}} -> (the lrs whose median is the fewest, whether one of them is the grid's edge)."""
    medians = {lr: median(s.values()) for lr, s in lrs.items()}
    fewest = min(medians.values())
    best = sorted(lr for lr, m in medians.items() if m == fewest and math.isfinite(m))
    return best, bool({min(lrs), max(lrs)} & set(best)) and len(lrs) > 1


def section_steps_pow2(rep):
    p2 = pow2_analysis(rep)
    if p2 is None:
        return
    batches = sorted(p2.runs)
    size = only(p2.rows, "lr_base_size")
    head = [B, "lr", *([f"lr_base (lr × {num(size)}/B)"] if size else []), "sweep"] + [
        f"updates to {num(t)}, median (reached/runs)" for t in p2.targets]
    sweep_of = {(r[B], lr_of(r)): s for s in STEPS_POW2 for r in rep.rows(s)}
    table = []
    for b in batches:
        for lr, s in sorted(p2.runs[b].items()):
            ups = list(zip(*s.values(), strict=True))
            table.append([fmt_key(b), f"{lr:g}", *([f"{lr * size / b:.3g}"] if size else []), sweep_of[b, lr]] + [
                f"{fmt(median(u), 1)} ({success(u)})" for u in ups])
    rep.table("steps_pow2", head, table)
    table = []
    for i, t in enumerate(p2.targets):
        fit = p2.fits[i]
        for b in batches:
            lr_star, fewest = fit.per_batch[b]
            best, edge = fewest_updates({lr: {k: u[i] for k, u in s.items()} for lr, s in p2.runs[b].items()})
            samples = [x[i].per_batch[b][0] for x in p2.boot]
            table.append([num(t), fmt_key(b), f"{min(p2.runs[b]):g} to {max(p2.runs[b]):g}",
                          (listing(f"{lr:g}" for lr in best) + (" (edge)" if edge else "")) if best else "none",
                          fmt_interval(fewest, *boot_ci(p2, i, lambda x, b=b: x.per_batch[b][1]), 1),
                          fmt_interval(lr_star, *percentile_interval(samples), 4), share_defined(samples)])
    rep.table("steps_pow2_best", ["target", B, "lr grid", "fewest-updates cell(s), lr", "median updates there [95%]",
                                  "lr* (parabola in log lr) [95%]", "resamples with lr* inside the grid"], table)
    table = []
    for i, t in enumerate(p2.targets):
        fit = p2.fits[i]
        c, k, rss_p = fit.power
        lr_max, b_noise, rss_s = fit.saturating
        n = len(fit.fitted)
        table.append([num(t), f"{n} ({numbers(fit.fitted)})" if n else "0",
                      fmt_interval(k, *boot_ci(p2, i, lambda x: x.power[1]), 2),
                      fmt(math.sqrt(rss_p / n) / math.log(10), 3) if n else "n/a",
                      fmt_interval(lr_max, *boot_ci(p2, i, lambda x: x.saturating[0]), 3),
                      fmt_interval(b_noise, *boot_ci(p2, i, lambda x: x.saturating[1]), 0),
                      fmt(math.sqrt(rss_s / n) / math.log(10), 3) if n else "n/a",
                      fmt_interval(fit.delta_aic, *boot_ci(p2, i, lambda x: x.delta_aic), 1),
                      share_defined([x[i].delta_aic for x in p2.boot])])
    rep.table("lr_saturation", ["target", "batch sizes with an lr*", "power law: k in lr ∝ B^k [95%]",
                                "rms residual (decades)", "saturating: lr_max [95%]", "B_noise [95%]",
                                "rms residual (decades)", "AIC(power) − AIC(saturating) [95%]",
                                "resamples where both fits exist"], table)
    windows = [noise_window(rep, t) for t in p2.targets]
    whole = noise_window(rep)
    table = []
    for i, t in enumerate(p2.targets):
        s_min, b_crit = p2.fits[i].critical
        value, interval, until = windows[i]
        table.append([num(t), fmt_interval(s_min, *boot_ci(p2, i, lambda x: x.critical[0]), 1),
                      fmt_interval(b_crit, *boot_ci(p2, i, lambda x: x.critical[1]), 0), fmt(s_min * b_crit, 0),
                      fmt_median(until.values(), 0) if until else "n/a",
                      fmt_interval(value, *interval, 0), fmt_interval(whole[0], *whole[1], 0)])
    rep.table("critical_batch_targets", ["target", "S_min (updates) [95%]", "B_crit (images) [95%]",
                                         "E_min = S_min × B_crit", "noise-scale runs: updates to the target",
                                         "B_simple up to the target [95%]", "B_simple, whole runs [95%]"], table)
    figure_steps_pow2(rep, p2, batches, windows)
    text_steps_pow2(rep, p2, batches, windows, whole)


def figure_steps_pow2(rep, p2, batches, windows):
    colors = dict(zip(batches, plt.cm.viridis(np.linspace(0, 0.9, len(batches))), strict=True))
    fig, axes = new_figure(2, 3, (16, 9))
    for i, t in enumerate(p2.targets):  # top row: updates against lr at each target
        ax = axes[i]
        for b, color in colors.items():
            lrs = sorted(p2.runs[b])
            for lr in lrs:
                seeds_ci(ax, lr, [u[i] for u in p2.runs[b][lr].values()], color, f"batch {fmt_key(b)}", log=True,
                         spread=0.04, interval=False, meaning="never reached the target")
            medians = [median([u[i] for u in p2.runs[b][lr].values()]) for lr in lrs]
            finite = [(lr, m) for lr, m in zip(lrs, medians, strict=True) if math.isfinite(m)]
            if finite:
                line(ax, *zip(*finite, strict=True), "-", f"batch {fmt_key(b)}: median", color=color, lw=1)
            if math.isfinite(p2.fits[i].per_batch[b][0]):
                ax.axvline(p2.fits[i].per_batch[b][0], color=color, ls=":", lw=1, label=once(ax, "lr* (parabola)"))
                record(ax, f"batch {fmt_key(b)}: lr*", p2.fits[i].per_batch[b][0], None)
        ax.set_xscale("log")
        ax.set(xlabel="lr", ylabel=f"updates to val/acc {num(t)}", title=f"target {num(t)}: each seed, median line")
    panel_pow2_steps(axes[3], p2, batches)
    panel_pow2_lr(axes[4], p2, batches)
    panel_noise_targets(axes[5], p2, windows)
    for ax in axes:
        ax.title.set_fontsize(9)
        log_y(ax)
        legend(ax, fontsize=6, **({"ncol": 2, "loc": "lower left"} if ax in axes[:3] else {}))
    sweeps = listing(s for s in STEPS_POW2 if rep.rows(s))
    fig.suptitle(f"{design(p2.rows, 'optimizer', 'scheduler')}, precise BN; {sweeps} pooled, "
                 f"{listing(sorted({len(s) for lrs in p2.runs.values() for s in lrs.values()}))} seeds per cell",
                 fontsize=9)
    rep.save(fig, "steps_pow2")


def panel_pow2_steps(ax, p2, batches):
    """S(B): the fewest median updates per batch with its bootstrap interval, and the fit S_min(1 + B_crit/B), at
    each target."""
    for i, t in enumerate(p2.targets):
        color = f"C{i}"
        for b in batches:
            x = jitter(b, i, len(p2.targets), 0.12)
            value = p2.fits[i].per_batch[b][1]
            if math.isfinite(value):
                estimate(ax, x, value, boot_ci(p2, i, lambda f, b=b: f.per_batch[b][1]), color,
                         f"{num(t)}: batch {fmt_key(b)}", label=once(ax, f"{num(t)}: fewest median updates, 95%"))
            else:
                off_scale(ax, x, value, color, f"{num(t)}: batch {fmt_key(b)}", "no cell reached in half its runs")
        s_min, b_crit = p2.fits[i].critical
        if math.isfinite(b_crit):
            span = np.geomspace(batches[0], batches[-1], 50)
            line(ax, span, s_min * (1 + b_crit / span), "--", f"{num(t)}: S_min(1 + B_crit/B), B_crit {b_crit:.0f}",
                 color=color, lw=1)
    batch_axis(ax, batches)
    ax.set(xlabel="batch size (images)", ylabel="updates to the target", title="steps to each target, S(B)")


def panel_pow2_lr(ax, p2, batches):
    """lr* per batch with its bootstrap interval at each target, and the two fits over the same points."""
    for i, t in enumerate(p2.targets):
        color = f"C{i}"
        fit = p2.fits[i]
        for b in batches:
            x, value = jitter(b, i, len(p2.targets), 0.12), fit.per_batch[b][0]
            if math.isfinite(value):
                estimate(ax, x, value, boot_ci(p2, i, lambda f, b=b: f.per_batch[b][0]), color,
                         f"{num(t)}: batch {fmt_key(b)}", label=once(ax, f"{num(t)}: lr*, 95%"))
            else:
                off_scale(ax, x, value, color, f"{num(t)}: batch {fmt_key(b)}", "no lr* inside the grid")
        if fit.fitted and math.isfinite(fit.power[1]):
            span = np.geomspace(fit.fitted[0], fit.fitted[-1], 50)
            line(ax, span, fit.power[0] * span ** fit.power[1], ":", f"{num(t)}: power law, k {fit.power[1]:.2f}",
                 color=color, lw=1)
            if math.isfinite(fit.saturating[1]):
                line(ax, span, fit.saturating[0] / (1 + fit.saturating[1] / span), "--",
                     f"{num(t)}: lr_max/(1 + B_noise/B), B_noise {fit.saturating[1]:.0f}", color=color, lw=1)
    batch_axis(ax, batches)
    ax.set(xlabel="batch size (images)", ylabel="lr*", title="optimum lr: power law (dotted), saturating (dashed)")


def panel_noise_targets(ax, p2, windows):
    """B_crit at each target beside B_simple pooled over the noise-scale runs' training up to that target."""
    for i, t in enumerate(p2.targets):
        estimate(ax, i - 0.1, p2.fits[i].critical[1], boot_ci(p2, i, lambda f: f.critical[1]), "tab:red",
                 f"{num(t)}: B_crit", label=once(ax, "B_crit from S(B), 95%"))
        estimate(ax, i + 0.1, windows[i][0], windows[i][1], "k", f"{num(t)}: B_simple up to the target",
                 label=once(ax, "B_simple up to the target, 95%"))
    ax.set_xticks(range(len(p2.targets)), [num(t) for t in p2.targets])
    ax.set_xlim(-0.5, len(p2.targets) - 0.5)
    ax.set(xlabel="target val/acc", ylabel="images", title="critical batch and noise scale, by target")


def text_steps_pow2(rep, p2, batches, windows, whole):
    rows, size = p2.rows, only(p2.rows, "lr_base_size")
    parts = [f"`{s}` ({design(rep.rows(s), B, grid_key(rep.rows(s)))})" for s in STEPS_POW2 if rep.rows(s)]
    cells = sum(len(lrs) for lrs in p2.runs.values())
    rep.text("steps_pow2_design", (
        f"{listing(parts)}, pooled into one grid per batch size and compared in lr"
        + (f" (a grid in lr_base trains at lr = lr_base × B/{num(size)})" if size else "") + ": batch "
        f"{numbers(batches)}, {cells} cells. Every run stops at its first evaluation with val/acc ≥ "
        f"{said(rows, 'target_val_acc')} or when its epochs run out ({said(rows, 'epochs')} by sweep), so its "
        "history holds "
        f"its first evaluation at or above each of {numbers(p2.targets)}; the updates to each target are read "
        "there. A run that never gets there counts as infinitely many updates: a cell's value is the median over "
        "its seeds with those at ∞ (finite while fewer than half failed), and the table gives how many got there. "
        "lr* is the vertex of a parabola in log lr through a batch size's finite medians (as in 4a), S the fewest "
        f"median updates; intervals are 95% percentile intervals from {BOOTSTRAP // 2:,} resamples of each cell's "
        "runs."))
    paragraphs, crit = [], {}
    for i, t in enumerate(p2.targets):
        fit = p2.fits[i]
        s_min, b_crit = fit.critical
        crit[t] = boot_ci(p2, i, lambda x: x.critical[1])
        failed = sum(any(not math.isfinite(u[i]) for u in s.values()) for lrs in p2.runs.values()
                     for s in lrs.values())
        paragraphs.append(
            f"To {num(t)}: the fewest median updates go " + ", ".join(fmt(fit.per_batch[b][1], 1) for b in batches)
            + f" at batch {numbers(batches)}; {failed} of the {cells} cells have a run that never got there. "
            f"S_min(1 + B_crit/B) gives **B_crit = {fmt_interval(b_crit, *crit[t], 0)} images**, S_min = "
            f"{fmt_interval(s_min, *boot_ci(p2, i, lambda x: x.critical[0]), 1)} updates, E_min = "
            f"{fmt(s_min * b_crit, 0)} examples.")
    low, high = p2.targets[0], p2.targets[-1]
    if low != high:
        order = apart(crit[high], crit[low])
        ends = (f"B_crit at {num(high)} ({fmt_interval(p2.fits[-1].critical[1], *crit[high], 0)})",
                f"B_crit at {num(low)} ({fmt_interval(p2.fits[0].critical[1], *crit[low], 0)})")
        sentence = (f"{ends[0]} is {'above' if order == 1 else 'below'} {ends[1]}" if order else
                    f"{ends[0]} and {ends[1]} have overlapping intervals")
        rep.finding("4e", sentence, bool(order))
        paragraphs.append(sentence + (
            ": the critical batch grows as the target gets harder, as McCandlish et al. (2018) find it grows as the "
            "loss falls." if order == 1 else "."))
    rep.text("steps_pow2_answer", *paragraphs)
    text_lr_saturation(rep, p2, batches)
    text_noise_targets(rep, p2, windows, whole, crit)


def text_lr_saturation(rep, p2, batches):
    paragraphs = []
    for i, t in enumerate(p2.targets):
        fit = p2.fits[i]
        edges = []
        for b in batches:
            best, edge = fewest_updates({lr: {k: u[i] for k, u in s.items()} for lr, s in p2.runs[b].items()})
            if edge:
                edges.append(f"{num(b)} ({'top' if max(p2.runs[b]) in best else 'bottom'})")
        missing = [b for b in batches if not math.isfinite(fit.per_batch[b][0])]
        where_ = (f" The fewest-updates cell is at the edge of its grid at batch {listing(edges)}"
                  if edges else " No batch size has its fewest-updates cell at the edge of its grid") + (
            f"; the parabola places no lr* inside the grid at batch {listing(map(num, missing))}." if missing
            else "; the parabola places lr* inside every grid.")
        if len(fit.fitted) < 3 or not math.isfinite(fit.delta_aic):
            paragraphs.append(f"At {num(t)}: lr* at fewer than 3 batch sizes, too few for the two fits.{where_}")
            continue
        n = len(fit.fitted)
        interval = boot_ci(p2, i, lambda x: x.delta_aic)
        settled = not math.isnan(interval[0]) and not inside(0, interval)
        verdict = ("the saturating form fits better beyond noise" if settled and fit.delta_aic > 0 else
                   "the power law fits better beyond noise" if settled else
                   "no interval: the fits exist in fewer than half the resamples" if math.isnan(interval[0]) else
                   "the interval includes 0: the data do not choose between them")
        rep.finding("4e", f"At val/acc {num(t)}, AIC(power law) − AIC(saturating) over lr* at {n} batch sizes is "
                          f"{fmt_interval(fit.delta_aic, *interval, 1)}: {verdict.split(':')[0]}", settled)
        k_ci = boot_ci(p2, i, lambda x: x.power[1])
        slopes = ("; no interval" if math.isnan(k_ci[0]) else ": it " + listing(
            f"{'includes' if inside(power, k_ci) else 'excludes'} {power} ({rule})"
            for power, rule in ((0.5, "square-root scaling"), (1, "linear scaling"))))
        paragraphs.append(
            f"At {num(t)}, over lr* at batch {numbers(fit.fitted)}: the power law lr* ∝ B^k has "
            f"k = {fmt_interval(fit.power[1], *k_ci, 2)}{slopes}, rms residual "
            f"{fmt(math.sqrt(fit.power[2] / n) / math.log(10), 3)} decades; the saturating form has lr_max = "
            f"{fmt_interval(fit.saturating[0], *boot_ci(p2, i, lambda x: x.saturating[0]), 3)} and B_noise = "
            f"{fmt_interval(fit.saturating[1], *boot_ci(p2, i, lambda x: x.saturating[1]), 0)}, rms residual "
            f"{fmt(math.sqrt(fit.saturating[2] / n) / math.log(10), 3)} decades. Both have two parameters, so "
            f"AIC(power) − AIC(saturating) = {fmt_interval(fit.delta_aic, *interval, 1)} is {n} times the log ratio "
            f"of their residual sums of squares (each resample fits both to the optima it has): {verdict}.{where_}")
    rep.text("lr_saturation_answer", *paragraphs)


def text_noise_targets(rep, p2, windows, whole, crit):
    if not rep.rows("lab1_noise_scale"):
        return
    parts = []
    for i, t in enumerate(p2.targets):
        value, interval, until = windows[i]
        order = apart(interval, crit[t])
        b_crit = f"B_crit at {num(t)} ({fmt_interval(p2.fits[i].critical[1], *crit[t], 0)})"
        sentence = (f"over the training up to val/acc {num(t)} (median {fmt(median(until.values()), 0)} updates), "
                    f"B_simple = {fmt_interval(value, *interval, 0)} " + (
                        f"is {'above' if order == 1 else 'below'} {b_crit}" if order else
                        f"and {b_crit} have overlapping intervals"))
        rep.finding("4e", f"In `lab1_noise_scale`, {sentence}", bool(order))
        parts.append(sentence)
    rep.text("noise_targets_answer", (
        f"In `lab1_noise_scale`'s runs (4d), each run's evaluations up to its first at or above the target, pooled "
        f"as a ratio of means: {'; '.join(parts)}. Over whole runs it is {fmt_interval(whole[0], *whole[1], 0)}. "
        "These runs train at one lr and batch, not at each batch size's optimum, and reach a target at their own "
        "pace; the window is the stretch of their training in which the target is reached."))

# ---------------------------------------------------------------- cost, summary, and the table of sections

def section_costs(rep):
    times = runfiles.read_results(rep.results_dir / TIMES)
    if not times:
        return
    total = sum(t["wall_s"] for t in times)
    runs = {t["sweep"]: len(rep.rows(t["sweep"])) for t in times}
    rep.table("sweep_times", ["sweep", "runs", "wall time (s)", "min", "date", "note"], [
        [f"`{t['sweep']}`", str(runs[t["sweep"]]), f"{t['wall_s']:,.0f}", fmt(t["wall_s"] / 60, 1), str(t["date"]),
         t.get("note", "")] for t in times] + [["all", str(sum(runs.values())), f"{total:,.0f}", fmt(total / 60, 1),
                                                "", ""]])
    longest = [f"`{t['sweep']}` ({fmt(t['wall_s'] / 60, 1)} min)" for t in sorted(times, key=lambda t: -t["wall_s"])]
    dates = distinct(times, "date")
    by_date = [f"{minutes(sum(t['wall_s'] for t in where(times, date=d)))} for "
               f"{num(sum(runs[t['sweep']] for t in where(times, date=d)))} runs on {d}" for d in dates]
    rep.text("sweep_times", (
        f"That is {minutes(total)} for {num(sum(runs.values()))} runs, one sweep after another"
        + (f" ({listing(by_date)})" if len(dates) > 1 else "") + f". The longest sweeps are {listing(longest[:3])}."))


def section_summary(rep):
    """The findings of the sections above, split by the rule `resolved` (or `apart`) into two lists."""
    for name, keep in (("resolved", True), ("not_resolved", False)):
        items = [f"- {s[0].upper()}{s[1:]} ({section})." for ok, s, section in rep.findings if ok == keep]
        rep.text(name, "\n".join(items) or "- none")
    st = steps_analysis(rep)
    rows = [r for rs, _ in rep.loaded.values() for r in rs]
    if not rows:
        return
    model, data, img = (listing(num(v) for v in distinct(rows, k)) for k in ("model", "dataset", "img_size"))
    needed = (f" The {num(st.target)} target is {math.ceil(st.target * one(st.rows, 'val_size') - 1e-9)} of "
              f"{num(one(st.rows, 'val_size'))} validation images, so steps to it move in jumps of one image."
              if st else "")
    rep.text("limits", (
        f"**What these sizes leave out.** One small dataset (`{data}` at {img} px), one small model (`{model}`), "
        f"{listing(distinct(rows, 'device'))}: the steps and lr findings are the literature's regime at toy "
        f"scale, not a prediction for larger datasets.{needed}"))


class Section(NamedTuple):
    sweeps: tuple  # the section runs when one of these is in results/; () runs always
    function: object  # Report -> None: writes its tables, text blocks and figures
    figures: dict = {}  # figure name -> (sweep whose runs W&B shows, [(panel kind, by, metrics)]): wandb_panels


# The report's sections, in order. A figure's W&B panels plot the keys that figure draws: summary keys in bars
# and parallel plots, history keys in curves (step metric `epoch`); every `by` is a config key.
SECTIONS = (
    Section((), section_setup),
    Section(("lab1_batch_size", "lab1_groupnorm"), section_bn_diagnosis, {
        "bn_diagnosis": ("lab1_batch_size", [("parallel", (B, "precise_bn"), ("val/acc_final", "test/acc"))])}),
    Section(("lab1_batch_time",), section_batch_time, {
        "batch_time": ("lab1_batch_time", [("bars", B, ("time/train_s", "throughput/train_img_s",
                                                         "memory/peak_mb"))])}),
    Section(("lab1_batch_size", "lab1_equal_updates", "lab1_batch_lr"), section_generalisation, {
        "generalisation": ("lab1_equal_updates", [("bars", B, ("test/acc",))])}),
    Section(TIME_SWEEPS, section_time_to_result, {
        "time_to_targets": ("lab1_time_to_result", [("bars", B, ("target/train_s", "target/examples"))])}),
    Section(("lab1_gap_16", "lab1_gap_256"), section_gap, {
        "gap": ("lab1_gap_256", [("parallel", ("lr", "ghost_batch_size"), ("val/acc_final", "test/acc",
                                                                        "sharpness/top_eig"))])}),
    Section(GROUPNORM_LR, section_groupnorm_lr),
    Section(("lab1_equal_examples",), section_equal_examples),
    Section(("lab1_one_epoch",), section_one_epoch),
    Section(("lab1_epochs",), section_epochs, {
        "overfitting": ("lab1_epochs", [("curves", "label_noise", ("val/loss", "train/loss"))])}),
    Section(("lab1_epochs_cosine",), section_cosine),
    Section(("lab1_memorisation",), section_memorisation, {
        "memorisation": ("lab1_memorisation", [("curves", None, ("train/acc_clean", "train/acc_noisy",
                                                                 "train/acc_noisy_true", "val/loss"))])}),
    Section(("lab1_lr",), lr_section("lab1_lr", "lr_sgd", "SGD, constant lr"), {
        "lr_sgd": ("lab1_lr", [("curves", "lr", ("train/loss", "val/acc"))])}),
    Section(("lab1_lr_adam",), lr_section("lab1_lr_adam", "lr_adam", "AdamW, constant lr"), {
        "lr_adam": ("lab1_lr_adam", [("curves", "lr", ("train/loss", "val/acc"))])}),
    Section(("lab1_edge",), section_edge, {
        "edge": ("lab1_edge", [("curves", "lr", ("sharpness/top_eig", "train/loss"))])}),
    Section(("lab1_lr_slow",), section_lr_slow, {
        "lr_slow": ("lab1_lr_slow", [("curves", None, ("train/loss", "val/acc"))])}),
    Section(STEPS, section_steps, {
        "steps": ("lab1_steps", [("parallel", (B, "lr_base"), ("target/updates", "target/examples",
                                                                "target/train_s"))])}),
    Section(("lab1_warmup",), section_warmup),
    Section(("lab1_noise_scale",), section_noise_scale, {
        "noise_scale": ("lab1_noise_scale", [("curves", None, ("noise/trace_sigma", "noise/grad_sq",
                                                                "noise/b_simple"))])}),
    Section(STEPS_POW2, section_steps_pow2, {
        "steps_pow2": ("lab1_steps_pow2", [("parallel", (B, "lr_base"), ("target/updates", "target/examples"))])}),
    Section((), section_costs),
    Section((), section_summary),  # last: it lists the findings of the sections above
)


def regenerate(results_dir, out_dir):
    """Write every table, text block and figure the results allow; rewrite README.md's blocks. -> table names."""
    rep = Report(results_dir, out_dir)
    for section in SECTIONS:
        if not section.sweeps or any(s in rep.loaded for s in section.sweeps):
            section.function(rep)
    if (rep.out / "README.md").exists():
        update_readme(rep.out / "README.md", rep.blocks)
    return sorted(name.split(":", 1)[1] for name in rep.blocks if name.startswith("table:"))


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
    """Each sweep.py folder's results.csv -> <sweep>.csv, each row with its run's commit, versions and settings (from
    its config.json), and its runs' history.csv files -> <sweep>_history.csv. Results already in results_dir are
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
        rows = runfiles.read_results(results)
        runs = []
        for row in rows:
            folder = results.parent / str(row["run_id"])
            config = runfiles.read_json(folder / runfiles.CONFIG) or {}
            row.update({k: config.get(k) for k in PROVENANCE})
            row.update({k: config[k] for k in SETTINGS if k in config})  # else a swept one stays as the row has it
            history = runfiles.read_history(folder / runfiles.HISTORY)
            if history:
                runs.append((row["run_id"], history))
        added = (*PROVENANCE, *SETTINGS)
        head = list(dict.fromkeys([*runfiles.RESULT_COLUMNS, *(k for r in rows for k in r if k not in added),
                                   *added]))
        with open(results_dir / f"{sweep}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, head, restval="", lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: cell(v) for k, v in r.items()} for r in sorted(rows, key=lambda r: str(r["run_id"])))
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

    Parameters, provenance and settings come from each run's config. Metrics come from its summary, less W&B's `_`
    keys and any key that is also a parameter: the summary's `lr` is the last value logged, never the swept one.
    """
    summaries = {r.id: {k: summary_value(v) for k, v in r.summary_metrics.items()
                        if not k.startswith("_") and k not in {*params, "status", "wandb_run_dir", *PROVENANCE,
                                                                 *SETTINGS}}
                 for r in runs}
    settings = [k for k in SETTINGS if k not in params]
    metrics = sorted({k for summary in summaries.values() for k, v in summary.items() if v is not None})
    rows = []
    for r in sorted(runs, key=lambda r: r.id):
        # train.py's own status is the precise one: a diverged or oom run still exits 0 ("finished" in W&B)
        status = r.summary_metrics.get("status") or W_AND_B_STATE[r.state]
        rows.append([r.id, status, ""] + [cell(r.config.get(p)) for p in params]
                    + [cell(summaries[r.id].get(m)) for m in metrics]
                    + [cell(r.config.get(k)) for k in (*PROVENANCE, *settings)])
    return [*runfiles.RESULT_COLUMNS, *params, *metrics, *PROVENANCE, *settings], rows


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
    """-> (sweep, W&B panels of the metrics that figures/<name>.png plots), from SECTIONS; None for a figure W&B
    can't show. Every metric is a key train.py logs: summary keys in bars and parallel plots, history keys in
    curves (step metric `epoch`); every groupby and parameter is a config key."""
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
        return [wr.ParallelCoordinatesPlot(title=" x ".join(params), columns=columns)]

    kinds = {"bars": bars, "curves": curves, "parallel": parallel}
    for section in SECTIONS:
        if name in section.figures:
            sweep, specs = section.figures[name]
            return sweep, [panel for kind, by, metrics in specs for panel in kinds[kind](by, metrics)]
    return None


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
        elif not re.fullmatch(r"<!-- /?(table|text):[\w-]+ -->", line.strip()):
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
