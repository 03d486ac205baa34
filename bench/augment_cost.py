"""Benchmark: what each augmentation flag costs, on both data paths, against the same path without it.

    python bench/augment_cost.py --write                  # digits at 32 px, resnet10t, 3 epochs, 2 rounds
    python bench/augment_cost.py --device cuda --dataset synthetic --img_size 224 --model resnet50 --write

img/s is train.py's throughput/train_img_s, median over epochs 2..E (epoch 1 holds the workers' start and the
first-touch costs). The in-memory path augments on the device, batch by batch (RandAugment image by image on the
host); the streaming path runs timm's transforms per image in --workers loader processes. Each round runs every
setting on both paths in turn; a ratio is to the same path's run without augmentation in the same round, and
the table gives the median over rounds.
"""

import argparse
import statistics
import tempfile

from common import add_write_flag, report, train_img_s, train_run

SETTINGS = {  # name: train.py flags, as timm's train.py names them
    "none": [],
    "flip": ["--hflip=0.5"],
    "random-resized crop": ["--scale=0.08,1"],
    "crop + flip": ["--scale=0.08,1", "--hflip=0.5"],
    "random erasing": ["--reprob=0.25"],
    "mixup + cutmix": ["--mixup=0.8", "--cutmix=1.0"],
    "RandAugment": ["--aa=rand-m9-mstd0.5-inc1"],
}
PATHS = {"in memory": ["--data_in_memory=true"], "streaming": ["--data_in_memory=false"]}  # --workers: streaming


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--img_size", type=int, default=32, help="pixels")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3, help="epoch 1 is warm-up and not counted")
    p.add_argument("--workers", type=int, default=2, help="loader processes of the streaming path")
    p.add_argument("--rounds", type=int, default=2)
    add_write_flag(p)
    args = p.parse_args()
    common = [f"--model={args.model}", f"--dataset={args.dataset}", f"--img_size={args.img_size}",
              f"--batch_size={args.batch_size}", f"--epochs={args.epochs}",
              f"--cpu={args.device == 'cpu'}", "--train_samples=0"]
    img_s, acc = {}, {}  # (path, setting) -> [per round]
    for r in range(args.rounds):
        for path, path_flags in PATHS.items():
            for name, flags in SETTINGS.items():
                with tempfile.TemporaryDirectory() as tmp:
                    workers = [f"--workers={args.workers}"] if path == "streaming" else []  # in memory: none
                    got = train_run([*common, *path_flags, *workers, *flags], tmp)
                img_s.setdefault((path, name), []).append(train_img_s(got["history"]))
                acc.setdefault((path, name), []).append(got["summary"]["test/acc"])
                print(r, path, name, f"{img_s[path, name][-1]:.1f} img/s", f"test/acc {acc[path, name][-1]:.4f}",
                      flush=True)
    rows = []
    for name in SETTINGS:
        cells = []
        for path in PATHS:
            ratios = [a / b for a, b in zip(img_s[path, name], img_s[path, "none"], strict=True)]
            cells += [f"{statistics.median(img_s[path, name]):.1f}", f"{statistics.median(ratios):.2f}",
                      f"{statistics.median(acc[path, name]):.4f}"]
        rows.append(f"| {name} | `{' '.join(SETTINGS[name]) or '(none)'}` | " + " | ".join(cells) + " |")
    body = "\n".join([
        f"{args.model}, {args.dataset}, {args.img_size} px, batch {args.batch_size}, {args.epochs} epochs, "
        f"{args.workers} loader workers on the streaming path, {args.rounds} rounds; img/s over epochs 2..E.",
        "",
        "| augmentation | train.py flags | in memory img/s | vs none | test/acc | streaming img/s | vs none "
        "| test/acc |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    report(args, f"Augmentation: what each flag costs on each path ({args.device})", body, args.device)


if __name__ == "__main__":
    main()
