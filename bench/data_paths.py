"""Benchmark: bring your own data (issue 19). JPEGs of 400x300 made here from the two photographs scikit-learn
ships (random crops, zooms and colour shifts), in 10 class folders, then four side-by-side comparisons:

    python bench/data_paths.py --write                       # the issue's sizes: 10,000 images, 128 px
    python bench/data_paths.py --images 2000 --train_images 1024 --write   # smaller, for a busy 2-core host

1. stream: train.py's streaming path against timm's own train.py (TIMM_TRAIN, a checkout's train.py), one epoch
   of --train_images at 128 px, resnet10t, batch 64, the same augmentation (random-resized crop, flip) and
   workers; img/s over the epoch, and the seconds from process start to the first training step. Alternated,
   each side first in every other round, the files read once into the page cache before the first. Two more
   sides split off the allocator's part: train.py with glibc's default malloc (--keep_freed_memory=False), and
   timm's train.py with the malloc settings train.py makes (SAME_MALLOC, through the environment).
2. memory: peak memory (PSS: shared pages counted once) of train.py's process tree (main process and loader
   workers), streaming --images against 4x as many (the same files linked again), --updates each. Alternated.
   (Only this comparison samples memory: reading a process's /proc/PID/smaps ten times a second slows it,
   which `--only sampling` measures.)
3. decode once: a sweep of 4 in-memory runs over --images (one sweep.py agent, warm starts): each run's
   time/startup_s; the first decodes into a fresh cache, the others map it. Against the previous release's
   train.py (PREVIOUS, default /work/main/train.py at this branch's base), which decodes in every run.
4. in memory against timm's train.py on the 32 px digits ImageFolder (1,797 PNGs), 10 epochs, batch 64, and a plain
   PyTorch loop (bench/plain_loop.py) over the same images with no data cost at all, with train.py's malloc
   settings: the ceiling of any data path. And timm's train.py with those malloc settings.
Every figure is printed with `uptime`'s load average beside it; the host is shared.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import ROOT, SAME_MALLOC, add_write_flag, clean_env, report

TRAIN = ROOT / "train.py"
TIMM_TRAIN = Path(os.environ.get("TIMM_TRAIN", "/tmp/data/timm/train.py"))
PREVIOUS = Path(os.environ.get("PREVIOUS", "/work/main/train.py"))
DEFAULT_MALLOC = "--keep_freed_memory=False"
GOALS = {"stream": 1.0, "startup": 5.0, "memory": 1.10, "decode": 3.0, "digits": 1.3}


def load():
    return os.getloadavg()[0]


def make_jpegs(root, n, classes=10, unique=1000, seed=0):
    """n JPEGs of 400x300 in class folders: `unique` distinct crops of real photographs, linked to reach n."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    photos = [Image.fromarray(a) for a in load_sample_images().images]  # 427x640 colour photographs
    rng = np.random.default_rng(seed)
    made = []
    for i in range(min(n, unique)):
        photo = photos[i % 2]
        w = int(rng.uniform(160, 640))
        h = min(photo.height, int(w * 0.75))
        x0, y0 = rng.integers(0, photo.width - w + 1), rng.integers(0, photo.height - h + 1)
        image = photo.crop((x0, y0, x0 + w, y0 + h)).resize((400, 300))
        image = Image.fromarray(np.clip(np.asarray(image) * rng.uniform(0.7, 1.3, 3), 0, 255).astype(np.uint8))
        path = root / f"class_{i % classes}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
        made.append(path)
    for i in range(len(made), n):  # the same images again, under new names (hard links: no disk)
        path = root / f"class_{i % classes}" / f"{i:06d}.jpg"
        os.link(made[i % len(made)], path)
    return root


def link_tree(src, dst, times):
    """dst holds every file of src `times` times over, hard-linked under new names."""
    for f in src.rglob("*.jpg"):
        for k in range(times):
            target = dst / f.parent.name / f"{k}_{f.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(f, target)
    return dst


def watch(argv, cwd, env, first_line=None, sample=False):
    """Run a command; with sample, sample its process tree's memory every 0.1 s (reading /proc/PID/smaps, which
    slows the process it reads: bench/RESULTS.md), so speed is never measured while sampling.
    -> (wall s, stdout, peak MB or 0, s to first_line)."""
    import psutil
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, lines, first = [0.0], [], [None]

    def sample_memory():
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                # proportional set size: pages a forked worker shares with its parent count once, not twice
                rss = sum(q.memory_full_info().pss for q in [p, *p.children(recursive=True)])
                peak[0] = max(peak[0], rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.1)

    thread = threading.Thread(target=sample_memory, daemon=True)
    if sample:  # never while speed is measured
        thread.start()
    for line in proc.stdout:
        lines.append(line)
        if first_line and first[0] is None and re.search(first_line, line):
            first[0] = time.perf_counter() - start
    proc.wait()
    if sample:
        thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(map(str, argv))}\n{''.join(lines[-8:])}")
    return time.perf_counter() - start, "".join(lines), peak[0], first[0]


def ours(folder, out, flags, tmp, sample=False):
    env = clean_env(tmp, WANDB_MODE="disabled", XDG_CACHE_HOME=str(tmp / "cache"))
    wall, stdout, peak, _ = watch([sys.executable, str(TRAIN), "--dataset=imagefolder", f"--data_dir={folder}",
                                   f"--output_dir={out}", *flags], tmp, env, sample=sample)
    summary = json.loads((Path(out) / "summary.json").read_text())
    return {"wall": wall, "peak_mb": peak, "img_s": summary["throughput/train_img_s"],
            "startup_s": summary["time/startup_s"], "stdout": stdout}


def timm_run(folder, out, flags, tmp, batches, malloc=None):
    """timm's train.py on the CPU; img/s over every epoch from its log, start-up to its first logged step."""
    env = clean_env(tmp, WANDB_MODE="disabled", **(malloc or {}))
    argv = [sys.executable, str(TIMM_TRAIN), "--data-dir", str(folder), "--train-split", "train", "--val-split", "val",
            "--model", "resnet10t", "--device", "cpu", "--no-prefetcher", "--opt", "adamw", "--lr", "0.002",
            "--weight-decay", "0.05", "--sched", "cosine", "--warmup-epochs", "0", "--smoothing", "0",
            "--color-jitter", "0", "--train-interpolation", "bilinear", "--log-interval", str(max(1, batches // 4)),
            "--checkpoint-hist", "1", "--output", str(out), *flags]
    wall, stdout, peak, first = watch(argv, tmp, env, first_line=r"Train: 0 \[\s*0/")
    # each epoch's last log line holds its average over the whole epoch; the run's rate is over every epoch, as
    # train.py's throughput/train_img_s is (the epochs have equal updates: the harmonic mean)
    rates = dict(re.findall(r"Train: (\d+) .*?\(\s*[\d.]+s,\s*([\d.]+)/s\)", stdout))
    img_s = len(rates) / sum(1 / float(r) for r in rates.values()) if rates else float("nan")
    return {"wall": wall, "peak_mb": peak, "img_s": img_s, "startup_s": first,
            "epoch0_img_s": float(rates.get("0", "nan"))}  # what this script reported before 2026-12-01


def plain_run(folder, epochs, tmp):
    """bench/plain_loop.py over the folder at 32 px, with train.py's malloc settings: its img/s over every epoch,
    as throughput/train_img_s is."""
    argv = [sys.executable, str(ROOT / "bench" / "plain_loop.py"), "--data=imagefolder", f"--data_dir={folder}",
            "--img_size=32", "--batch_size=64", f"--epochs={epochs}"]
    wall, stdout, _, _ = watch(argv, tmp, clean_env(tmp, **SAME_MALLOC))
    rates = json.loads(stdout.strip().splitlines()[-1])["epoch_img_s"]
    return {"wall": wall, "img_s": len(rates) / sum(1 / r for r in rates)}


def split_folder(src, dst, train_n, val_n=100):
    """dst/train and dst/val: the first train_n and next val_n files of src, linked."""
    files = sorted(src.rglob("*.jpg"), key=lambda f: f.name)  # file i is in class i % 10: every class in both
    for i, f in enumerate(files[:train_n + val_n]):
        target = dst / ("train" if i < train_n else "val") / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(f, target)
    return dst


def stream_vs_timm(tmp, folder, args):
    data = split_folder(folder, tmp / "stream_split", args.train_images)
    batches = args.train_images // 64
    ours_flags = ["--img_size=128", "--batch_size=64", "--epochs=1", f"--workers={args.workers}",
                  "--data_in_memory=false", "--hflip=0.5", "--scale=0.08,1", "--test_fraction=0.05"]
    timm_flags = ["--img-size", "128", "-b", "64", "--epochs", "1", "-j", str(args.workers), "--hflip", "0.5",
                  "--scale", "0.08", "1"]
    for path in data.rglob("*.jpg"):  # into the page cache: no side is the one that reads the disk cold
        path.read_bytes()
    rows, sides = [], ("train.py", "timm", "train.py, glibc's malloc", "timm, train.py's malloc")
    for r in range(args.rounds):
        for k, side in enumerate(sides[::1 if r % 2 == 0 else -1]):  # ABBA: no side always runs first
            before = load()
            if side.startswith("train.py"):
                flags = [*ours_flags, DEFAULT_MALLOC] if "malloc" in side else ours_flags
                got = ours(data, tmp / f"s{r}_{k}", flags, tmp)
            else:
                malloc = SAME_MALLOC if "malloc" in side else {}
                got = timm_run(data, tmp / f"t{r}_{k}", timm_flags, tmp, batches, malloc)
            rows.append((side, r, got["img_s"], got["startup_s"], before))
            print(side, r, got["img_s"], got["startup_s"], f"load {before:.1f}", flush=True)
    return rows


def memory_growth(tmp, folder, args):
    big = link_tree(folder, tmp / "x4", 4)
    flags = ["--img_size=128", "--batch_size=64", "--epochs=1", f"--max_updates={args.updates}", "--hflip=0.5",
             f"--workers={args.workers}", "--data_in_memory=false", "--scale=0.08,1", "--val_fraction=0.01",
             "--test_fraction=0.01"]
    rows = []
    for r in range(args.rounds):
        for name, f in ((f"{args.images:,}", folder), (f"{4 * args.images:,}", big)):
            before = load()
            got = ours(f, tmp / f"m{r}_{name}", flags, tmp, sample=True)
            rows.append((name, r, got["peak_mb"], before))
            print("memory", name, r, got["peak_mb"], f"load {before:.1f}", flush=True)
    return rows


def sampling_cost(tmp, folder, args):
    """train.py's streaming img/s over --updates updates with the memory sampling of `watch` on and off: why the
    speed comparisons run unsampled."""
    data = split_folder(folder, tmp / "sampling_split", args.train_images)
    flags = ["--img_size=128", "--batch_size=64", "--epochs=1", f"--workers={args.workers}", "--hflip=0.5",
             "--data_in_memory=false", "--scale=0.08,1", "--test_fraction=0.05", f"--max_updates={args.updates}"]
    rows = []
    for r in range(args.rounds):
        for side in ("sampled", "unsampled"):
            before = load()
            got = ours(data, tmp / f"p{r}_{side}", flags, tmp, sample=side == "sampled")
            rows.append((side, r, got["img_s"], before))
            print("sampling", side, r, got["img_s"], f"load {before:.1f}", flush=True)
    return rows


def decode_once(tmp, folder, args):
    """A 4-run sweep (sweep.py, warm starts) over the folder in memory, on a fresh cache; the previous
    release's train.py run the same way (its first run alone: it decodes every time)."""
    import yaml
    rows = []
    for side, program, runs in (("this branch", TRAIN, 4), ("previous release", PREVIOUS, args.previous_runs)):
        sweep = tmp / f"sweep_{side.split()[0]}.yaml"
        sweep.write_text(yaml.safe_dump({
            "program": str(program), "method": "grid",
            "parameters": {"seed": {"values": list(range(runs))}, "dataset": {"value": "imagefolder"},
                           "data_dir": {"value": str(folder)}, "img_size": {"value": 128},
                           "max_updates": {"value": 1}, "batch_size": {"value": 64},
                           "val_fraction": {"value": 0.02}, "test_fraction": {"value": 0.02},
                           "wandb_mode": {"value": "disabled"}}}))
        env = clean_env(tmp, XDG_CACHE_HOME=str(tmp / f"cache_{side.split()[0]}"))
        subprocess.run([sys.executable, str(ROOT / "sweep.py"), str(sweep), "--sweep_dir", str(tmp / sweep.stem)],
                       cwd=tmp, env=env, check=True, capture_output=True, text=True)
        for run_dir in sorted((tmp / sweep.stem).iterdir()):
            if (run_dir / "train.log").exists() and not (run_dir / "summary.json").exists():
                raise RuntimeError(f"{run_dir} failed: {(run_dir / 'train.log').read_text()[-500:]}")
            if (run_dir / "summary.json").exists():
                s = json.loads((run_dir / "summary.json").read_text())
                decoded = "read from the decoded cache" not in (run_dir / "train.log").read_text()
                rows.append((side, decoded, s["time/startup_s"], load()))
                print("decode", side, "decoded" if decoded else "mapped", s["time/startup_s"], flush=True)
    return rows


def digits_vs_timm(tmp, args):
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.target))
    for k, i in enumerate(order):
        split = "val" if k < 180 else "train"
        path = tmp / "digits" / split / f"class_{digits.target[i]}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 15).astype("uint8")).resize((32, 32)).save(path)
    rows = []
    for r in range(args.rounds):
        sides = ("train.py", "timm", "plain loop", "timm, train.py's malloc")
        for side in sides[r % 4:] + sides[:r % 4]:  # each side runs first in one round of four
            before = load()
            if side == "plain loop":  # the ceiling: train.py's model and optimizer with no data cost at all
                got = plain_run(tmp / "digits" / "train", args.epochs, tmp)
                acc = float("nan")
            elif side == "train.py":
                flags = ["--img_size=32", "--batch_size=64", f"--epochs={args.epochs}", "--test_fraction=0.05"]
                got = ours(tmp / "digits", tmp / f"d{r}", flags, tmp)
                acc = json.loads((tmp / f"d{r}" / "summary.json").read_text())["val/acc_final"]
            else:
                flags = ["--img-size", "32", "-b", "64", "--epochs", str(args.epochs), "-j", "2", "--hflip", "0",
                         "--scale", "1", "1", "--ratio", "1", "1"]
                out = tmp / f"dt{r}_{len(side)}"
                got = timm_run(tmp / "digits", out, flags, tmp, 25, SAME_MALLOC if "malloc" in side else {})
                csvs = sorted(out.rglob("summary.csv"))
                acc = float(csvs[-1].read_text().strip().splitlines()[-1].split(",")[3]) / 100 if csvs else float("nan")
            rows.append((side, r, got["img_s"], acc, before, got.get("epoch0_img_s", got["img_s"])))
            print("digits", side, r, got["img_s"], acc, f"load {before:.1f}", flush=True)
    return rows


def ratio(rows, col, a="train.py", b="timm"):
    med = {s: float(np.median([r[col] for r in rows if r[0] == s])) for s in (a, b)}
    return med[a], med[b], med[a] / med[b]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10000, help="images in the folder (memory and decode benches)")
    p.add_argument("--train_images", type=int, default=10000, help="training images in the stream-vs-timm epoch")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="alternations of each side-by-side comparison")
    p.add_argument("--epochs", type=int, default=10, help="of the digits comparison")
    p.add_argument("--updates", type=int, default=10, help="of each run in the memory comparison")
    p.add_argument("--previous_runs", type=int, default=2, help="runs of the previous release's sweep")
    p.add_argument("--only", default="stream,memory,decode,digits", help="of stream,memory,decode,digits,sampling")
    add_write_flag(p)
    args = p.parse_args()
    only = args.only.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="data_paths_", dir=os.environ.get("TMPDIR", "/tmp")))
    folder = make_jpegs(tmp / "jpegs", args.images)
    lines = []
    if "stream" in only:
        rows = stream_vs_timm(tmp, folder, args)
        ours_s, timm_s, r = ratio(rows, 2)
        start = float(np.median([row[3] for row in rows if row[0] == "train.py"]))
        timm_start = float(np.median([row[3] for row in rows if row[0] == "timm"]))
        glibc_s, _, glibc_r = ratio(rows, 2, "train.py, glibc's malloc")
        sides, by = list(dict.fromkeys(row[0] for row in rows)), {(row[1], row[0]): row[2] for row in rows}
        _, same_s, same_r = ratio(rows, 2, "train.py", "timm, train.py's malloc")
        lines += [f"| streaming: img/s, {args.train_images:,} JPEGs at 128 px, 1 epoch, {args.workers} workers | "
                  f">= {GOALS['stream']}x timm | {ours_s:.1f} / {timm_s:.1f} = {r:.2f}x; the allocator's part: "
                  f"both with glibc's default malloc {glibc_s:.1f} / {timm_s:.1f} = {glibc_r:.2f}x, both with "
                  f"train.py's {ours_s:.1f} / {same_s:.1f} = {same_r:.2f}x (each round, {' / '.join(sides)}: "
                  f"{'; '.join(' / '.join(f'{by[k, side]:.1f}' for side in sides) for k in range(args.rounds))})"
                  f" | load {rows[0][4]:.1f} |",
                  f"| streaming: start-up before the first step (s) | <= {GOALS['startup']} | {start:.1f} "
                  f"(timm's train.py: {timm_start:.1f} to its first logged step) | |"]
    if "sampling" in only:
        rows = sampling_cost(tmp, folder, args)
        sampled, unsampled, r = ratio(rows, 2, "sampled", "unsampled")
        lines.append(f"| memory sampling's cost: train.py's streaming img/s, {args.updates} updates, sampled against "
                     f"not | (none: why speed is measured unsampled) | {sampled:.1f} / {unsampled:.1f} = {r:.2f}x "
                     f"(each round: {', '.join(f'{row[2]:.1f}' for row in rows)}) | load {rows[0][3]:.1f} |")
    if "memory" in only:
        rows = memory_growth(tmp, folder, args)
        small, big = (float(np.median([r[2] for r in rows if r[0] == k])) for k in dict.fromkeys(r[0] for r in rows))
        lines.append(f"| streaming: peak PSS of the process tree, {args.images:,} against {4 * args.images:,} images | "
                     f"within 10% | {small:.0f} MB / {big:.0f} MB = {big / small:.3f} | load {rows[0][3]:.1f} |")
    if "decode" in only:
        rows = decode_once(tmp, folder, args)
        later = [r[2] for r in rows if r[0] == "this branch" and not r[1]]
        first = [r[2] for r in rows if r[0] == "this branch" and r[1]]
        prev = [r[2] for r in rows if r[0] == "previous release"]
        lines.append(f"| decode once: time/startup_s of a 4-run sweep (warm starts), {args.images:,} JPEGs at 128 px "
                     f"| runs 2-4 <= {GOALS['decode']} s | run 1 {first[0]:.1f} s (decodes), runs 2-4 "
                     f"{', '.join(f'{s:.1f}' for s in later)} s; previous release every run: "
                     f"{', '.join(f'{s:.1f}' for s in prev)} s | load {rows[0][3]:.1f} |")
    if "digits" in only:
        rows = digits_vs_timm(tmp, args)
        ours_s, timm_s, r = ratio(rows, 2)
        acc_o, acc_t, _ = ratio(rows, 3)
        *_, first_r = ratio(rows, 5)  # against timm's first epoch alone
        plain_s, _, ceiling = ratio(rows, 2, "plain loop")
        by, rounds = {(row[1], row[0]): row[2] for row in rows}, sorted({row[1] for row in rows})
        sides = ("train.py", "timm", "plain loop", "timm, train.py's malloc")
        _, same_s, same_r = ratio(rows, 2, "train.py", sides[3])
        lines.append(f"| in memory: img/s on the 32 px digits ImageFolder, {args.epochs} epochs | "
                     f">= {GOALS['digits']}x timm | "
                     f"{ours_s:.1f} / {timm_s:.1f} = {r:.2f}x (final val/acc {acc_o:.3f} against {acc_t:.3f}); timm's "
                     f"first epoch alone (this script's measure before 2026-12-01): {first_r:.2f}x; a plain PyTorch "
                     f"loop with no data cost and train.py's malloc (the ceiling): {plain_s:.1f} / {timm_s:.1f} = "
                     f"{ceiling:.2f}x, train.py {ours_s / plain_s:.2f}x of it; timm with train.py's malloc: "
                     f"{ours_s:.1f} / {same_s:.1f} = {same_r:.2f}x (each round, train.py / timm / plain / timm same "
                     "malloc: "
                     f"{'; '.join(' / '.join(f'{by[r, side]:.1f}' for side in sides) for r in rounds)})"
                     f" | load {rows[0][4]:.1f} |")
    body = ("| measure | goal | measured | 1-minute load before |\n|---|---|---|---|\n" + "\n".join(lines) +
            f"\n\nuptime at the end: `{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}`")
    report(args, "Bring your own data: streaming, memory, decode once, in memory against timm", body)


if __name__ == "__main__":
    main()
