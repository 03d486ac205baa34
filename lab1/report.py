"""Lab 1 report: tables, figures and the numbers in the README's prose, regenerated from the raw sweep results.

    python lab1/report.py                                 # regenerate tables/, figures/, README.md blocks
    python lab1/report.py --from_sweeps runs/sweeps       # import sweep.py's folders (--force: replace), regenerate
    python lab1/report.py --wandb ENTITY/PROJECT/SWEEP_ID # import W&B sweeps (network; repeatable), then regenerate
    python lab1/report.py --publish ENTITY/PROJECT        # also save README.md as a W&B Report (network)

Inputs (formats in INTERFACE.md): results/<sweep>.csv, one row per run: its parameters, summary, provenance and
settings (lr, global batch, lr_base_size, split sizes, target, processes, accumulation: every fact the report
states about a run is a column, never a literal here); results/<sweep>_history.csv, one row per run and evaluation
point; results/sweep_times.csv, each sweep's wall time as measured when it ran.

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
        if path.stem.endswith("_history") or path.name == TIMES:
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
        + "".join(f"; {listing(f'`{s}`' for s in commits[c])} from {c}" for c in order[1:]) + "."))


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
        "(INTERFACE.md)."))


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
    rep.text("sweep_times", (
        f"That is {fmt(total / 60, 0)} minutes for {num(sum(runs.values()))} runs, one sweep after another. The "
        f"longest sweeps are {listing(longest[:3])}."))


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
    Section(("lab1_one_epoch",), section_one_epoch),
    Section(("lab1_epochs",), section_epochs, {
        "overfitting": ("lab1_epochs", [("curves", "label_noise", ("val/loss", "train/loss"))])}),
    Section(("lab1_epochs_cosine",), section_cosine),
    Section(("lab1_lr",), lr_section("lab1_lr", "lr_sgd", "SGD, constant lr"), {
        "lr_sgd": ("lab1_lr", [("curves", "lr", ("train/loss", "val/acc"))])}),
    Section(("lab1_lr_adam",), lr_section("lab1_lr_adam", "lr_adam", "AdamW, constant lr"), {
        "lr_adam": ("lab1_lr_adam", [("curves", "lr", ("train/loss", "val/acc"))])}),
    Section(STEPS, section_steps, {
        "steps": ("lab1_steps", [("parallel", (B, "lr_base"), ("target/updates", "target/examples",
                                                                "target/train_s"))])}),
    Section(("lab1_warmup",), section_warmup),
    Section(("lab1_noise_scale",), section_noise_scale, {
        "noise_scale": ("lab1_noise_scale", [("curves", None, ("noise/trace_sigma", "noise/grad_sq",
                                                                "noise/b_simple"))])}),
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
