"""Benchmark: train.py's images/s with each of its speed switches on, one run each, against the baseline.

    python bench/toggles.py --device cuda --model resnet50 --img_size 224 --batch_size 128 \\
        --mixed_precision bf16 --dataset synthetic --write

img/s is train.py's throughput/train_img_s, median over epochs 2..E; epoch 1 is shown apart because it holds
the one-off costs (torch.compile's compilation, cuDNN's kernel timing). A run that fails or runs past --timeout
is a row saying so, and the others still run.
"""

import argparse
import subprocess
import tempfile
from pathlib import Path

from common import add_write_flag, report, train_img_s, train_run

TOGGLES = "channels_last,cudnn_benchmark,compile"  # train.py switches; compile last: the slowest to start


def one_run(args, flags, folder):
    """-> (img/s or None when the run failed, the rest of its table row)."""
    try:
        r = train_run(flags, folder, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {args.timeout} s | | |"
    except RuntimeError as e:  # train.py failed: its last line says why
        return None, f"failed: {str(e).splitlines()[-1][:150]} | | |"
    return train_img_s(r["history"]), (f"{r['history'][0]['throughput/train_img_s']:.1f} "
                                       f"| {r['summary']['memory/peak_mb']:.0f} | {r['wall']:.1f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--toggles", default=TOGGLES, help="comma-separated train.py switches, one run each with it =True")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--img_size", type=int, default=16, help="pixels")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4, help="epoch 1 is warm-up and not counted")
    p.add_argument("--train_samples", type=int, default=0)
    p.add_argument("--mixed_precision", default="no", choices=("no", "bf16", "fp16"))
    p.add_argument("--timeout", type=int, default=600, help="seconds per run")
    p.add_argument("--keep", default="", help="keep each run's folder in KEEP/<n>/out (baseline: KEEP/0/out)")
    add_write_flag(p)
    args = p.parse_args()
    common = [f"--model={args.model}", f"--dataset={args.dataset}", f"--img_size={args.img_size}",
              f"--batch_size={args.batch_size}", f"--epochs={args.epochs}", f"--train_samples={args.train_samples}",
              f"--mixed_precision={args.mixed_precision}", f"--cpu={args.device == 'cpu'}"]
    rows, base = [], None
    runs = ["", *(f"--{name}=True" for name in args.toggles.split(",") if name)]  # "": the baseline
    for i, toggle in enumerate(runs):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(args.keep, str(i)) if args.keep else Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            img_s, rest = one_run(args, [*common, toggle] if toggle else common, folder)
        base = img_s if i == 0 else base
        ratio = f"{img_s / base:.3f}" if img_s and base else ""
        rows.append(f"| `{toggle or 'baseline'}` | {f'{img_s:.1f}' if img_s else ''} | {ratio} | {rest} |")
        print(rows[-1], flush=True)
    body = "\n".join([
        f"{args.model}, {args.dataset}, {args.img_size} px, batch {args.batch_size}, {args.epochs} epochs, "
        f"precision {args.mixed_precision}; one run each, each a fresh process.",
        "",
        "| train.py flag | img/s (epochs 2..E) | vs baseline | epoch 1 img/s | peak MB | run wall (s) |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    report(args, f"Toggles: train.py's speed switches ({args.device})", body, args.device)


if __name__ == "__main__":
    main()
