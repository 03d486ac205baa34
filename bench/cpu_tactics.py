"""Benchmark: the CPU tactics train.py uses, each against the plain alternative, side by side in one process.

    python bench/cpu_tactics.py [--repeats 5] [--write]

resnet10t on digits-shaped data (1 channel, 16 px, batch 64), as `python train.py` trains it. Each pair is timed
alternately, --repeats rounds of --steps each, and reported as medians and the ratio tactic / alternative
(above 1: the tactic is faster). train.py keeps a tactic only where the ratio says it pays.
"""

import argparse
import statistics
import time

import timm
import timm.optim
import torch
import torch.nn.functional as F
from common import add_write_flag, report

N, PX, BATCH = 1259, 16, 64  # digits' training split, train.py's default size and batch


def model_and_data(channels_last=False):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    images = torch.randint(0, 256, (N, 1, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (N,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, images, labels


def batch(images, labels, idx, channels_last=False):
    x = F.interpolate(images[idx].float().div_(255), size=(PX, PX), mode="bilinear", antialias=True)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), labels[idx]


def train_steps(steps, channels_last=False, sync=False, threads=None):
    """img/s of `steps` training steps (forward, backward, AdamW step) on in-memory batches."""
    if threads:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
    model, images, labels = model_and_data(channels_last)
    opt = timm.optim.create_optimizer_v2(model, opt="adamw", lr=2e-3, weight_decay=0.05)
    order = torch.randperm(N)
    start = time.perf_counter()
    for i in range(steps):
        x, y = batch(images, labels, order[(i * BATCH) % (N - BATCH):][:BATCH], channels_last)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if sync:
            loss.item()
    seconds = time.perf_counter() - start
    if threads:
        torch.set_num_threads(before)
    return steps * BATCH / seconds


def per_sample_steps(steps):
    """img/s when a batch is assembled the usual way: a Dataset of single images and default_collate."""
    model, images, labels = model_and_data()
    opt = timm.optim.create_optimizer_v2(model, opt="adamw", lr=2e-3, weight_decay=0.05)

    class Single(torch.utils.data.Dataset):
        def __len__(self):
            return N

        def __getitem__(self, i):
            x, y = batch(images, labels, torch.tensor([i]))
            return x[0], y[0]

    loader = iter(torch.utils.data.DataLoader(Single(), batch_size=BATCH, shuffle=True))
    start = time.perf_counter()
    for _ in range(steps):
        x, y = next(loader)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return steps * BATCH / (time.perf_counter() - start)


def eval_pass(batch_size, mode):
    """img/s of one pass over the val + test splits (539 digits) in eval mode."""
    model, images, labels = model_and_data()
    model.eval()
    n = 539
    start = time.perf_counter()
    with mode():
        for i in range(0, n, batch_size):
            x, y = batch(images, labels, torch.arange(i, min(i + batch_size, n)))
            F.cross_entropy(model(x), y)
    return n / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="alternating rounds per pair")
    p.add_argument("--steps", type=int, default=15, help="training steps a round")
    add_write_flag(p)
    args = p.parse_args()
    s = args.steps
    pairs = [  # (tactic, what it is measured against, tactic's function, alternative's function)
        ("batched indexing of in-memory tensors", "a per-image Dataset + default_collate",
         lambda: train_steps(s), lambda: per_sample_steps(s)),
        ("channels_last", "contiguous (NCHW)", lambda: train_steps(s, channels_last=True), lambda: train_steps(s)),
        ("no host sync per step", "loss.item() every step", lambda: train_steps(s), lambda: train_steps(s, sync=True)),
        ("2 threads (torch's default here)", "1 thread", lambda: train_steps(s, threads=2),
         lambda: train_steps(s, threads=1)),
        ("eval: inference_mode, batch 64", "no_grad, batch 64", lambda: eval_pass(64, torch.inference_mode),
         lambda: eval_pass(64, torch.no_grad)),
        ("eval: inference_mode, batch 512", "inference_mode, batch 64", lambda: eval_pass(512, torch.inference_mode),
         lambda: eval_pass(64, torch.inference_mode)),
    ]
    train_steps(s)  # warm-up: oneDNN's first-call costs go to nobody
    rows = []
    for tactic, against, a, b in pairs:
        runs = [(a(), b()) for _ in range(args.repeats)]
        ta, tb = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        rows.append(f"| {tactic} | {against} | {ta:.0f} | {tb:.0f} | {ta / tb:.3f} |")
        print(rows[-1], flush=True)
    body = "\n".join([
        f"resnet10t, 1 x {PX} px, batch {BATCH}, AdamW; {args.repeats} alternating rounds of {s} steps "
        "(eval: one pass over 539 images) per pair; medians.",
        "",
        "| tactic | against | tactic img/s | against img/s | ratio |",
        "|---|---|---|---|---|",
        *rows,
    ])
    report(args, "CPU tactics, side by side", body)


if __name__ == "__main__":
    main()
