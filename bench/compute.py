"""Benchmark: what fraction of the machine's matmul rate train.py's training loop turns into model FLOPs.

    python bench/compute.py [--write]                          # CPU, float32, train.py's defaults (digits, 16 px)
    python bench/compute.py --device cuda --dtype bf16 --model resnet50 --img_size 224 --batch_size 128 \\
        --dataset synthetic --write

FLOPs per training image: torch.utils.flop_counter over one forward + backward at the benchmark batch size,
divided by the batch size (it counts matmuls and convolutions, not element-wise work). Images/s: a train.py run
made here (history.csv, median over epochs 2..E), or --history FILE from one made just before. The yardstick:
a square matmul timed after warm-up in this process, 2 n^3 FLOP each, median of several (float32, or bf16).
"""

import argparse
import csv
import statistics
import tempfile
import time

import timm
import torch
import torch.nn.functional as F
from common import add_write_flag, report, train_img_s, train_run
from torch.utils.flop_counter import FlopCounterMode

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_gflops(n, dtype, device, reps=7):
    """GFLOP/s of an n x n matmul: median over reps timings, each of enough calls to last about 0.1 s."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):  # warm-up: library init, clocks, caches
        a @ b
    sync()
    start = time.perf_counter()
    a @ b
    sync()
    calls = max(1, round(0.1 / (time.perf_counter() - start)))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(calls):
            a @ b
        sync()
        times.append((time.perf_counter() - start) / calls)
    return 2 * n**3 / statistics.median(times) / 1e9


def gflop_per_image(args, in_chans, num_classes):
    """Forward + backward of one batch, per image, in GFLOP."""
    model = timm.create_model(args.model, num_classes=num_classes, in_chans=in_chans).to(args.device).train()
    x = torch.randn(args.batch_size, in_chans, args.img_size, args.img_size, device=args.device)
    y = torch.randint(0, num_classes, (args.batch_size,), device=args.device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / args.batch_size / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES), help="of the matmul, and train.py's precision")
    p.add_argument("--matmul_n", type=int, default=0, help="matrix side; 0 = 2048 on CPU, 8192 on CUDA")
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--dataset", default="digits", help="train.py's --dataset (digits: 1 channel, others 3)")
    p.add_argument("--img_size", type=int, default=16, help="pixels")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4, help="of the train.py run; epoch 1 is warm-up")
    p.add_argument("--train_samples", type=int, default=0)
    p.add_argument("--history", default="", help="take img/s from this history.csv instead of a new run")
    add_write_flag(p)
    args = p.parse_args()

    n = args.matmul_n or (8192 if args.device == "cuda" else 2048)
    peak = matmul_gflops(n, DTYPES[args.dtype], args.device)
    if args.history:
        with open(args.history, newline="") as f:
            img_s = train_img_s([{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)])
        source = f"`{args.history}`"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            flags = [f"--model={args.model}", f"--dataset={args.dataset}", f"--img_size={args.img_size}",
                     f"--batch_size={args.batch_size}", f"--epochs={args.epochs}",
                     f"--train_samples={args.train_samples}", f"--cpu={args.device == 'cpu'}",
                     f"--mixed_precision={'bf16' if args.dtype == 'bf16' else 'no'}"]
            img_s = train_img_s(train_run(flags, tmp)["history"])
        source = f"`python train.py {' '.join(flags)}`"
    flop = gflop_per_image(args, 1 if args.dataset == "digits" else 3, 10)
    body = "\n".join([
        f"{args.model}, {args.dataset}, {args.img_size} px, batch {args.batch_size}, {args.dtype}. img/s from "
        f"{source} (median over epochs 2..E); matmul: {n} x {n} {args.dtype}, median of 7.",
        "",
        "| GFLOP per training image | train.py img/s | achieved GFLOP/s | matmul GFLOP/s | fraction "
        "| compute limit img/s |",
        "|---|---|---|---|---|---|",
        f"| {flop:.4f} | {img_s:.1f} | {flop * img_s:.1f} | {peak:.1f} | {flop * img_s / peak:.3f} "
        f"| {peak / flop:.0f} |",
    ])
    report(args, f"Compute: model FLOPs against the matmul rate ({args.device}, {args.dtype})", body, args.device)


if __name__ == "__main__":
    main()
