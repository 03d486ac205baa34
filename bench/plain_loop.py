"""A plain PyTorch training loop: the yardstick bench/throughput.py holds train.py's loop against.

    python bench/plain_loop.py --epochs 4                      # digits at train.py's defaults
    python bench/plain_loop.py --data imagefolder --data_dir DIR --img_size 32
    python bench/plain_loop.py --device cuda --model resnet50 --img_size 224 --mixed_precision bf16 --data synthetic

What a competent person writes without Accelerate or a DataLoader: the training set is preprocessed once into a
float tensor on the device, and an epoch is a shuffled pass of forward, cross_entropy, backward, optimizer step
and zero_grad. Prints one JSON line: img_s is the median over epochs 2..E of training images / epoch wall time
(epoch 1 is warm-up), measured as train.py measures throughput/train_img_s; peak_mb as train.py's memory/peak_mb.
"""

import argparse
import json
import resource
import statistics
import time

import numpy as np
import timm
import timm.optim
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

HELD_OUT = 0.3  # train.py's default val_fraction + test_fraction: the same number of training images


def load(args):
    """-> images (N, C, H, W) in 0..1 (synthetic: uint8, scaled after the split), and labels; before the split."""
    if args.data == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()  # 1,797 8x8 scans, values 0..16
        return torch.tensor(d.images, dtype=torch.float32)[:, None] / 16, torch.tensor(d.target)
    if args.data == "synthetic":  # as train.py's: 5,000 random uint8 RGB images, 10 classes, seeded
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (5000, 3, args.img_size, args.img_size), dtype=torch.uint8, generator=g)
        return x, torch.randint(0, 10, (5000,), generator=g)
    # Decoded once into memory, as train.py does: the comparison is of the training loops, not of PNG decoding.
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor
    ds = ImageFolder(args.data_dir)
    return torch.stack([pil_to_tensor(img) for img, _ in ds]).float() / 255, torch.tensor(ds.targets)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--img_size", type=int, default=16, help="pixels")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train_samples", type=int, default=0, help="use only this many training images; 0 = all")
    p.add_argument("--in_chans", type=int, default=0, help="0 = from the data")
    p.add_argument("--num_classes", type=int, default=0, help="0 = from the data")
    p.add_argument("--mixed_precision", default="no", choices=("no", "bf16", "fp16"))
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--data", default="digits", choices=("digits", "synthetic", "imagefolder"))
    p.add_argument("--data_dir", default="", help="a folder of class subfolders, for --data imagefolder")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    x, y = load(args)
    idx, _ = train_test_split(np.arange(len(y)), test_size=HELD_OUT, stratify=y.numpy(), random_state=0)
    idx = idx[:args.train_samples or None]
    x, y = x[idx].to(device).float(), y[idx].to(device)
    x = x / 255 if args.data == "synthetic" else x  # 5,000 float images at 224 px would take 3 GB before the split
    if x.shape[-1] != args.img_size:
        x = F.interpolate(x, size=(args.img_size, args.img_size), mode="bilinear", antialias=True)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)

    model = timm.create_model(args.model, num_classes=args.num_classes or int(y.max()) + 1,
                              in_chans=args.in_chans or x.shape[1]).to(device).train()
    if args.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    # train.py's defaults: adamw, lr 2e-3, weight decay 0.05 (momentum as it passes it)
    optimizer = timm.optim.create_optimizer_v2(model, opt="adamw", lr=2e-3, weight_decay=0.05, momentum=0.9)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # a no-op unless fp16
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    rates = []  # images/s of each epoch
    for _ in range(args.epochs):
        start = time.perf_counter()
        for batch in torch.randperm(len(y), device=device).split(args.batch_size):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(x[batch]), y[batch])
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()  # the queued kernels belong to this epoch
        rates.append(len(y) / (time.perf_counter() - start))

    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"img_s": statistics.median(rates[1:] or rates), "epoch_img_s": rates, "peak_mb": peak_mb,
                      "train_size": len(y)}))


if __name__ == "__main__":
    main()
