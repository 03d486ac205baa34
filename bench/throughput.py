"""Benchmark: images/s of train.py's training loop against a plain PyTorch loop (bench/plain_loop.py).

    python bench/throughput.py [--repeats 3] [--write]        # CPU: digits, and an ImageFolder of PNGs
    python bench/throughput.py --device cuda --model resnet50 --img_size 224 --batch_size 128 \\
        --mixed_precision bf16 --datasets synthetic --repeats 2 --write

Same model, data shape, batch size, optimizer (adamw, lr 2e-3, weight decay 0.05), precision and malloc settings
(common.SAME_MALLOC: what train.py's --keep_freed_memory makes) on both sides.
The two run alternately, each as a fresh process; each reports the median over epochs 2..E of training images /
epoch wall time (train.py's throughput/train_img_s from history.csv). The table gives the medians over the runs
and their ratio, against the goal train.py / plain >= 0.95. The machine is shared and noisy: rerun when
something else was busy.
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import ROOT, SAME_MALLOC, add_write_flag, clean_env, report, run, train_img_s, train_run

GOAL = 0.95  # train.py img/s / plain img/s
IMG_SIZE = {"digits": 16, "imagefolder": 32, "synthetic": 32}  # pixels, when --img_size is not given


def write_pngs(root, classes=10, per_class=100, size=32):
    """An ImageFolder: class folders of size x size RGB PNGs, noise around a class colour."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        colour = rng.integers(0, 256, 3)
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{i}.png")


def both_commands(args, dataset, data_dir):
    """-> (train.py flags, plain_loop.py argv) for one case."""
    size = args.img_size or IMG_SIZE[dataset]
    common = [f"--model={args.model}", f"--img_size={size}", f"--batch_size={args.batch_size}",
              f"--epochs={args.epochs}", f"--train_samples={args.train_samples}",
              f"--mixed_precision={args.mixed_precision}"]
    train = [*common, f"--dataset={dataset}", f"--data_dir={data_dir}", f"--cpu={args.device == 'cpu'}"]
    plain = [sys.executable, str(ROOT / "bench" / "plain_loop.py"), *common, f"--data={dataset}",
             f"--data_dir={data_dir}", f"--device={args.device}"]
    if args.channels_last:
        train.append("--channels_last=True")
        plain.append("--channels_last")
    return train, plain


def measure(args, dataset, data_dir):
    """Alternate train.py and the plain loop, --repeats times each; -> {side: [{img_s, peak_mb, train_size}]}."""
    train_flags, plain_argv = both_commands(args, dataset, data_dir)
    out = {"train.py": [], "plain": []}
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t = train_run(train_flags, tmp)
            out["train.py"].append({"img_s": train_img_s(t["history"]), "peak_mb": t["summary"]["memory/peak_mb"],
                                    "train_size": t["config"]["train_size"]})
        with tempfile.TemporaryDirectory() as tmp:
            _, stdout = run(plain_argv, cwd=tmp, env=clean_env(tmp, **SAME_MALLOC))
            out["plain"].append(json.loads(stdout.splitlines()[-1]))
        print(f"{dataset} run {r + 1}/{args.repeats}: train.py {out['train.py'][-1]['img_s']:.1f} img/s, "
              f"plain {out['plain'][-1]['img_s']:.1f} img/s", flush=True)
    return out


def table_row(args, dataset, results):
    def med(side, key):
        return statistics.median(r[key] for r in results[side])

    ratio = med("train.py", "img_s") / med("plain", "img_s")
    each = " / ".join(f"{t['img_s']:.0f}:{p['img_s']:.0f}" for t, p in zip(*results.values(), strict=True))
    return (f"| {dataset} | {args.img_size or IMG_SIZE[dataset]} "
            f"| {med('train.py', 'train_size'):.0f} / {med('plain', 'train_size'):.0f} "
            f"| {med('train.py', 'img_s'):.1f} | {med('plain', 'img_s'):.1f} | {ratio:.3f} | >= {GOAL} "
            f"| {med('train.py', 'peak_mb'):.0f} / {med('plain', 'peak_mb'):.0f} | {each} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="digits,imagefolder", help="comma-separated: digits, imagefolder, synthetic")
    p.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating")
    p.add_argument("--epochs", type=int, default=4, help="per run; epoch 1 is warm-up and not counted")
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--img_size", type=int, default=0, help="pixels; 0 = digits 16, imagefolder 32, synthetic 32")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--train_samples", type=int, default=0, help="0 = all of the training split")
    p.add_argument("--mixed_precision", default="no", choices=("no", "bf16", "fp16"))
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    add_write_flag(p)
    args = p.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        datasets = args.datasets.split(",")
        if "imagefolder" in datasets:
            write_pngs(Path(folder))
        for dataset in datasets:
            results = measure(args, dataset, folder if dataset == "imagefolder" else "data")
            rows.append(table_row(args, dataset, results))
    body = "\n".join([
        f"{args.model}, batch {args.batch_size}, {args.epochs} epochs a run (img/s: median over epochs 2..E, then "
        f"over {args.repeats} runs a side), precision {args.mixed_precision}"
        f"{', channels_last' if args.channels_last else ''}; both sides preprocess the data once into memory.",
        "",
        "| data | px | train images (train.py / plain) | train.py img/s | plain img/s | ratio | goal "
        "| peak MB (train.py / plain) | each run, train.py:plain img/s |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    report(args, f"Throughput: train.py against a plain PyTorch loop ({args.device})", body, args.device)


if __name__ == "__main__":
    main()
