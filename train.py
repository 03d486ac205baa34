"""Train a timm image classifier under Hugging Face Accelerate and log what Lab 1 asks to W&B.

    python train.py                                   # digits (ships with scikit-learn), ~30 s on 2 CPU cores
    python train.py --batch_size=256 --lr=3e-3        # any flag, as `--key=value` or `--key value`
    python train.py --config my.yaml --epochs 20      # YAML defaults, flags override
    accelerate launch --multi_gpu --num_processes 2 train.py   # one model, data-parallel, one W&B run
    wandb agent ENTITY/PROJECT/SWEEP_ID               # see sweeps/ and sweep.py

Per epoch it logs train/loss, train/acc, val/loss, val/acc, lr, time/epoch_s and throughput/train_img_s
(step metric `epoch`); at the end test/loss, test/acc, time/train_s, time/startup_s, memory/peak_mb and status.
The same numbers go to --output_dir (default runs/<run name>/): config.json, history.csv, summary.json.
"""

import time

START = time.perf_counter()  # seconds; time/startup_s counts imports too

import argparse
import csv
import json
import math
import os
import resource
import sys
from pathlib import Path

import accelerate
import numpy as np
import timm
import timm.data
import timm.optim
import timm.scheduler
import torch
import torch.nn.functional as F
import wandb
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

DATASETS = ("digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "imagefolder")


class ConfigError(Exception):
    """A user mistake: main() prints it as one line and exits with code 2."""


# ----------------------------------------------------------------------------------------------
# Configuration

def str2bool(text):
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(str(text).lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true/false/1/0, got {text!r}")
    return value


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(f"{message} (see python train.py --help)")


def build_parser():
    p = Parser(description="Train a timm classifier; flags are named like W&B sweep parameters.",
               allow_abbrev=False)  # a sweep typo such as --lr_ must never match --lr_something
    flag = p.add_argument

    def switch(name, help):
        flag(name, type=str2bool, nargs="?", const=True, default=False, help=help)

    hp = p.add_argument_group("hyperparameters (the names sweeps use)")
    flag = hp.add_argument
    flag("--model", default="resnet10t", help="any timm.create_model name")
    switch("--pretrained", "load timm's weights from the local HF cache or --pretrained_path")
    flag("--pretrained_path", default="", help="weights file (.safetensors/.pth) for --pretrained")
    flag("--dataset", default="digits", choices=DATASETS)
    flag("--data_dir", default="data", help="root of torchvision datasets, or the imagefolder folder")
    switch("--download", "let torchvision download the dataset (needs network)")
    flag("--img_size", type=int, default=16, help="pixels; images are resized to img_size x img_size")
    flag("--train_samples", type=int, default=0, help="use only this many training images; 0 = all")
    flag("--val_fraction", type=float, default=0.1, help="of the data held out for validation")
    flag("--test_fraction", type=float, default=0.2, help="held out for test when the dataset has no test split")
    flag("--batch_size", type=int, default=64, help="per process and per micro-batch")
    flag("--epochs", type=int, default=10)
    flag("--lr", type=float, default=2e-3, help="peak learning rate")
    flag("--optimizer", default="adamw", help="a timm optimizer name: adamw, sgd, adam, lamb, ...")
    flag("--momentum", type=float, default=0.9, help="for sgd and similar")
    flag("--weight_decay", type=float, default=0.05)
    flag("--scheduler", default="cosine", choices=("cosine", "step", "constant"), help="per update, by timm")
    flag("--warmup_epochs", type=int, default=0)
    flag("--label_smoothing", type=float, default=0.0)
    flag("--grad_accum_steps", type=int, default=1)
    flag("--clip_grad", type=float, default=0.0, help="max gradient norm; 0 = off")
    flag("--mixed_precision", default="no", choices=("no", "fp16", "bf16"))
    flag("--seed", type=int, default=0, help="fixes the split, the init and the batch order")
    switch("--noise_scale", "log the gradient noise scale noise/b_simple (needs grad_accum_steps >= 2)")

    infra = p.add_argument_group("infrastructure")
    flag = infra.add_argument
    flag("--config", default="", help="YAML file of flag defaults; flags given here override it")
    flag("--output_dir", default="", help="default runs/<run name>")
    flag("--run_name", default="")
    flag("--wandb_mode", default="", choices=("", "online", "offline", "disabled"),
         help="default: $WANDB_MODE, else online with an API key and offline without")
    flag("--wandb_project", default="lab1")
    flag("--wandb_entity", default="")
    flag("--wandb_group", default="", help="default: $WANDB_RUN_GROUP")
    flag("--wandb_tags", default="", help="comma-separated")
    flag("--num_workers", type=int, default=0, help="loader workers; in-memory data needs none")
    switch("--cpu", "train on the CPU even when a GPU is present")
    return p


def parse_args(argv=None):
    """Flags -> argparse.Namespace. Raises ConfigError on any unknown flag or bad value."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        parser.set_defaults(**load_config_file(parser, first.config))
    args = parser.parse_args(argv)
    check_args(args)
    return args


def load_config_file(parser, path):
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read --config {path}: {e}".splitlines()[0]) from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must be a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions}
    out = {}
    for key, value in values.items():
        if key not in actions or key in ("config", "help"):
            raise ConfigError(f"unknown key {key!r} in --config {path}; use the flag names of --help")
        action = actions[key]
        try:
            out[key] = action.type(value) if action.type and value is not None else value
        except (ValueError, argparse.ArgumentTypeError):
            raise ConfigError(f"bad value {value!r} for {key!r} in --config {path}") from None
        if action.choices and out[key] not in action.choices:
            raise ConfigError(f"{key}={value!r} in --config {path}; choose from {list(action.choices)}")
    return out


def check_args(a):
    rules = [
        (a.batch_size >= 1, "--batch_size must be >= 1"),
        (a.epochs >= 1, "--epochs must be >= 1"),
        (a.lr > 0, "--lr must be > 0"),
        (a.grad_accum_steps >= 1, "--grad_accum_steps must be >= 1"),
        (a.img_size >= 8, "--img_size must be >= 8"),
        (a.train_samples >= 0, "--train_samples must be >= 0 (0 = all)"),
        (0 < a.val_fraction < 1 and 0 < a.test_fraction < 1, "--val_fraction and --test_fraction must be in (0, 1)"),
        (a.model in timm.list_models() or timm.is_model(a.model),
         f"unknown timm model {a.model!r}; see timm.list_models()"),
        (not a.noise_scale or a.grad_accum_steps >= 2,
         "--noise_scale compares micro-batch and accumulated gradients: set --grad_accum_steps 2 or more"),
    ]
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)


# ----------------------------------------------------------------------------------------------
# Data: small datasets live in memory as uint8 tensors; a whole batch is resized and normalised at once

class TensorImages(torch.utils.data.Dataset):
    def __init__(self, images, labels, img_size, mean, std):
        self.images, self.labels, self.img_size = images, labels, img_size  # images: uint8 (N, C, H, W)
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitems__(self, indices):  # DataLoader fetches a batch with one call: no per-sample collate
        x = self.images[torch.as_tensor(indices)].float().div_(255)
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", antialias=True)
        return (x - self.mean) / self.std, self.labels[torch.as_tensor(indices)]

    def __getitem__(self, i):
        x, y = self.__getitems__([i])
        return x[0], y[0]


def keep_batch(batch):
    return batch


def load_arrays(args):
    """-> ({"train": (x, y)} plus "val" and "test" where the dataset has them, class names); x: uint8 NCHW."""
    if args.dataset == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()  # 1,797 real 8x8 scans, values 0..16
        x = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]
        return {"train": (x, d.target)}, [str(c) for c in d.target_names]
    if args.dataset == "imagefolder":
        return load_imagefolder(args)
    import torchvision.datasets as tvd
    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "mnist": tvd.MNIST,
           "fashion_mnist": tvd.FashionMNIST}[args.dataset]
    try:
        train, test = (cls(args.data_dir, train=t, download=args.download) for t in (True, False))
    except RuntimeError as e:
        raise ConfigError(f"{args.dataset} not found in --data_dir {args.data_dir} ({e}); "
                          "add --download on a machine with network, or point --data_dir at it") from None
    return {"train": channels_first(train), "test": channels_first(test)}, list(train.classes)


def channels_first(ds):
    x = np.asarray(ds.data, dtype=np.uint8)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return x, np.asarray(ds.targets)


def load_imagefolder(args):
    """One folder of class subfolders, or train/ (+ val/) + test/ subfolders; decoded once into memory."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2
    root = Path(args.data_dir)
    if not root.is_dir():
        raise ConfigError(f"--data_dir {root} is not a folder; give a folder of class subfolders")
    to_tensor = v2.Compose([v2.PILToTensor(), v2.Resize((args.img_size, args.img_size))])

    def read(folder):
        ds = ImageFolder(folder, transform=to_tensor)
        return torch.stack([ds[i][0] for i in range(len(ds))]).numpy(), np.asarray(ds.targets), ds.classes

    splits = ("train", "val", "test") if (root / "train").is_dir() and (root / "test").is_dir() else ()
    if not splits:
        x, y, classes = read(root)
        return {"train": (x, y)}, classes
    parts = {name: read(root / name) for name in splits if (root / name).is_dir()}
    return {name: (x, y) for name, (x, y, _) in parts.items()}, parts["train"][2]


def split_data(args, parts):
    """Carve the splits a dataset lacks out of its train split: stratified by class, fixed by --seed."""
    from sklearn.model_selection import train_test_split
    x, y = parts["train"]
    idx, held, left = np.arange(len(y)), {}, 1.0  # left: the fraction of the data still in idx
    for name, fraction in (("test", args.test_fraction), ("val", args.val_fraction)):
        if name not in parts:
            idx, held[name] = train_test_split(idx, test_size=fraction / left, stratify=y[idx],
                                               random_state=args.seed)
            left -= fraction
    if args.train_samples:
        idx = idx[:args.train_samples]
    held["train"] = idx
    return {**parts, **{name: (x[np.sort(i)], y[np.sort(i)]) for name, i in held.items()}}


def build_datasets(args, parts, data_config, device):
    """-> train, val and test TensorImages on the device, normalised with the model's statistics."""
    parts = split_data(args, parts)
    mean, std = data_config["mean"], data_config["std"]
    if parts["train"][0].shape[1] == 1:  # a grey image: one channel with the mean of timm's RGB statistics
        mean, std = [float(np.mean(mean))], [float(np.mean(std))]

    def make(images, labels):
        return TensorImages(torch.from_numpy(np.ascontiguousarray(images)).to(device),
                            torch.from_numpy(np.asarray(labels)).long().to(device), args.img_size, mean, std)

    return [make(*parts[name]) for name in ("train", "val", "test")]


# ----------------------------------------------------------------------------------------------
# Model

def create_model(args, num_classes, in_chans):
    kwargs = dict(num_classes=num_classes, in_chans=in_chans)
    if not args.pretrained:
        return timm.create_model(args.model, **kwargs)
    path = args.pretrained_path or cached_weights(args.model)  # a file, so timm never reaches for the hub
    if not path:
        raise ConfigError(f"no local weights for {args.model}: run timm.create_model('{args.model}', "
                          "pretrained=True) once on a machine with network to fill the Hugging Face cache, "
                          "or pass --pretrained_path FILE")
    if not Path(path).is_file():
        raise ConfigError(f"--pretrained_path {path} is not a file")
    try:
        return timm.create_model(args.model, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs)
    except (RuntimeError, ValueError, KeyError, OSError) as e:  # a file of other weights, or not weights at all
        raise ConfigError(f"cannot load {path} into {args.model}: {str(e).splitlines()[0][:200]}") from None


def cached_weights(model_name):
    """The file of timm's weights for model_name in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache
    cfg = timm.models.get_pretrained_cfg(model_name)
    for filename in ("model.safetensors", "pytorch_model.bin") if cfg and cfg.hf_hub_id else ():
        path = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(path, str):
            return path
    return None


# ----------------------------------------------------------------------------------------------
# Train and evaluate: each returns a dict of metrics

def grad_sq_norm(model):
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.stack(torch._foreach_norm(grads)).float().pow(2).sum()


def train_one_epoch(args, accelerator, model, loader, optimizer, scheduler, epoch):
    """One pass over this rank's shard. With --noise_scale it also measures McCandlish et al.'s B_simple."""
    model.train()
    loss_sum = torch.zeros((), device=accelerator.device)
    correct = torch.zeros((), device=accelerator.device)
    seen = 0  # samples this rank trained on
    noise = torch.zeros(3, device=accelerator.device)  # sums of the tr(Sigma) and |G|^2 estimates, and their count
    b_small = args.batch_size
    b_big = args.batch_size * args.grad_accum_steps * accelerator.num_processes
    fresh = True  # grads are zero: the next backward gives one micro-batch's gradient
    small = None  # |g|^2 of the first micro-batch of the current accumulation cycle
    updates = epoch * math.ceil(len(loader) / args.grad_accum_steps)
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
               disable=not (accelerator.is_main_process and sys.stderr.isatty()))  # agent logs get plain lines
    for x, y in bar:
        with accelerator.accumulate(model):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            accelerator.backward(loss)
            if args.noise_scale and fresh and not accelerator.sync_gradients:
                # Accelerate divides the loss by grad_accum_steps; undo that to get one micro-batch's |g|^2.
                small = grad_sq_norm(model) * (args.grad_accum_steps / grad_scale(accelerator)) ** 2
            fresh = accelerator.sync_gradients  # after this step's zero_grad the next backward starts a cycle
            if accelerator.sync_gradients and small is not None:
                big = grad_sq_norm(model) / grad_scale(accelerator) ** 2  # all-reduced, accumulated gradient
                noise += torch.stack([(small - big) / (1 / b_small - 1 / b_big),
                                      (b_big * big - b_small * small) / (b_big - b_small), torch.ones_like(big)])
                small = None
            if accelerator.sync_gradients and args.clip_grad:
                accelerator.clip_grad_norm_(model.parameters(), args.clip_grad)
            optimizer.step()
            optimizer.zero_grad()
            if accelerator.sync_gradients:
                updates += 1
                scheduler.step_update(updates)
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    count = torch.tensor(float(seen), device=loss_sum.device)
    totals = accelerator.reduce(torch.stack([loss_sum, correct.float(), count]))
    train_s = time.perf_counter() - start  # reduce() synchronised the device
    loss, acc, n = (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item(), totals[2].item()
    metrics = {"train/loss": loss, "train/acc": acc, "throughput/train_img_s": n / train_s}
    if args.noise_scale:  # per-cycle means of the two estimates; their ratio is B_simple
        noise = accelerator.reduce(noise, "mean")
        tr_sigma, g2 = (noise[:2] / noise[2].clamp(min=1)).tolist()
        metrics.update({"noise/trace_sigma": tr_sigma, "noise/grad_sq": g2, "noise/b_simple": b_simple(tr_sigma, g2)})
    return metrics, seen


def b_simple(tr_sigma, g2):
    """The simple noise scale; NaN when the |G|^2 estimate is not positive (noise swamps the mean gradient)."""
    return tr_sigma / g2 if g2 > 0 else float("nan")


def grad_scale(accelerator):
    return accelerator.scaler.get_scale() if accelerator.scaler is not None else 1.0


@torch.no_grad()
def evaluate(args, accelerator, model, loader, prefix):
    """Loss and accuracy over the whole split, gathered across ranks without the padding duplicates."""
    model.eval()
    losses, preds, labels = [], [], []
    for x, y in loader:
        logits = model(x)
        loss = F.cross_entropy(logits, y, reduction="none")
        loss, pred, y = accelerator.gather_for_metrics((loss, logits.argmax(1), y))
        losses.append(loss)
        preds.append(pred)
        labels.append(y)
    loss, pred, y = torch.cat(losses).float(), torch.cat(preds), torch.cat(labels)
    return {f"{prefix}/loss": loss.mean().item(), f"{prefix}/acc": (pred == y).float().mean().item()}, pred, y


# ----------------------------------------------------------------------------------------------
# Run bookkeeping: W&B on the main process, and the same numbers in --output_dir

def wandb_mode(args):
    if args.wandb_mode or os.environ.get("WANDB_MODE"):
        return args.wandb_mode or os.environ["WANDB_MODE"], False
    return ("online", False) if wandb.login(prompt=False, verify=False) else ("offline", True)


def start_wandb(args, config):
    mode, defaulted = wandb_mode(args)
    if mode == "disabled":
        os.environ["WANDB_MODE"] = "disabled"  # wandb.init then returns a no-op run
    run = wandb.init(project=args.wandb_project, entity=args.wandb_entity or None, group=args.wandb_group or None,
                     tags=[t for t in args.wandb_tags.split(",") if t] or None, name=args.run_name or None,
                     config=config, mode=mode)
    run.define_metric("epoch")
    for key in ("train/*", "val/*", "lr", "time/epoch_s", "throughput/*", "noise/*"):
        run.define_metric(key, step_metric="epoch")
    run.define_metric("val/acc", summary="max")
    run.define_metric("val/loss", summary="min")
    if defaulted:
        print(f"wandb: no API key, so offline: run saved in {run.settings.sync_dir}; "
              f"upload it with `wandb sync {run.settings.sync_dir}`", flush=True)
    return run


def write_json(path, data):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)  # a reader never sees half a file


def append_history(path, row):
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def peak_memory(accelerator):
    """MB: on CUDA the peak torch allocation since the start of training; on CPU the process's peak RSS."""
    if accelerator.device.type == "cuda":
        return {"memory/peak_mb": torch.cuda.max_memory_allocated() / 2**20,
                "memory/peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20}
    return {"memory/peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB


def versions():
    return {"torch": torch.__version__, "timm": timm.__version__, "accelerate": accelerate.__version__,
            "wandb": wandb.__version__}


# ----------------------------------------------------------------------------------------------

def train(args):
    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available(),  # cpu=True: real gloo ranks
                              mixed_precision=args.mixed_precision,
                              gradient_accumulation_steps=args.grad_accum_steps)
    set_seed(args.seed)
    main = accelerator.is_main_process
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    parts, classes = load_arrays(args)
    set_seed(args.seed)
    model = create_model(args, len(classes), in_chans=parts["train"][0].shape[1])
    data_config = timm.data.resolve_model_data_config(model)  # the model's own normalisation
    train_set, val_set, test_set = build_datasets(args, parts, data_config, accelerator.device)
    del parts
    optimizer = timm.optim.create_optimizer_v2(model, opt=args.optimizer, lr=args.lr,
                                               weight_decay=args.weight_decay, momentum=args.momentum)

    def loader(ds, shuffle):
        return torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=shuffle,
                                           collate_fn=keep_batch, num_workers=args.num_workers)

    model, optimizer, train_dl, val_dl, test_dl = accelerator.prepare(
        model, optimizer, loader(train_set, True), loader(val_set, False), loader(test_set, False))
    updates_per_epoch = math.ceil(len(train_dl) / args.grad_accum_steps)
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched=args.scheduler, num_epochs=args.epochs,
        warmup_epochs=args.warmup_epochs, decay_epochs=max(1, args.epochs // 3), step_on_epochs=False,
        updates_per_epoch=updates_per_epoch)

    config = {**vars(args), **versions(),
              "global_batch_size": args.batch_size * accelerator.num_processes * args.grad_accum_steps,
              "num_processes": accelerator.num_processes, "device": device_name(accelerator),
              "num_classes": len(classes), "train_size": len(train_set), "val_size": len(val_set),
              "test_size": len(test_set)}
    run = start_wandb(args, config) if main else None
    name = args.run_name or (run and run.name) or f"run-{run.id if run else time.strftime('%Y%m%d_%H%M%S')}"
    out = Path(args.output_dir or Path("runs") / name)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "history.csv").unlink(missing_ok=True)
        write_json(out / "config.json", config)

    summary = {"status": "finished", "time/startup_s": time.perf_counter() - START}
    start = time.perf_counter()
    history = []
    try:
        for epoch in range(args.epochs):
            epoch_start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            metrics, seen = train_one_epoch(args, accelerator, model, train_dl, optimizer, scheduler, epoch)
            if epoch == 0:  # proves the data is sharded: each rank trains on its own part
                seen = torch.tensor([seen], device=accelerator.device)
                summary["data/samples_per_rank"] = accelerator.gather(seen).tolist()
            if not math.isfinite(metrics["train/loss"]):
                summary["status"] = "diverged"
                metrics.update({"val/loss": float("nan"), "val/acc": float("nan")})
            else:
                metrics.update(evaluate(args, accelerator, model, val_dl, "val")[0])
            row = {"epoch": epoch + 1, **metrics, "lr": lr, "time/epoch_s": time.perf_counter() - epoch_start}
            history.append(row)
            if main:
                run.log(row)
                append_history(out / "history.csv", row)
                if not sys.stderr.isatty():
                    print(" ".join(f"{k}={v:.4g}" for k, v in row.items()), flush=True)
            if summary["status"] == "diverged":
                break
    except torch.OutOfMemoryError:
        summary["status"] = "oom"
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
    summary["time/train_s"] = time.perf_counter() - start
    summary.update(final_metrics(args, accelerator, model, test_dl, history, summary["status"], classes, run))
    peak = peak_memory(accelerator)  # the largest over the ranks
    peak_all = accelerator.reduce(torch.tensor(list(peak.values()), device=accelerator.device), "max")
    summary.update(zip(peak, peak_all.tolist(), strict=True))
    if main:
        # val/acc and val/loss keep the max and min that define_metric gives them in W&B
        run.summary.update({k: v for k, v in summary.items() if k not in ("val/acc", "val/loss")})
        summary["wandb_run_dir"] = run.settings.sync_dir if run.settings.mode != "disabled" else None
        write_json(out / "summary.json", summary)
        run.finish()
        print(f"{summary['status']}: test/acc={summary['test/acc']:.4f} test/loss={summary['test/loss']:.4f} "
              f"time/train_s={summary['time/train_s']:.1f} memory/peak_mb={summary['memory/peak_mb']:.0f} -> {out}")
    accelerator.end_training()
    return summary


def final_metrics(args, accelerator, model, test_dl, history, status, classes, run):
    nan = float("nan")
    last = history[-1] if history else {}
    out = {"epoch": len(history), "train/loss": last.get("train/loss", nan), "train/acc": last.get("train/acc", nan),
           "val/acc": max((h["val/acc"] for h in history if "val/acc" in h), default=nan),
           "val/loss": min((h["val/loss"] for h in history if "val/loss" in h), default=nan),
           "throughput/train_img_s": float(np.mean([h["throughput/train_img_s"] for h in history])) if history else nan}
    if args.noise_scale and history:  # over the whole run: the ratio of the summed estimates, far less noisy
        out["noise/b_simple"] = b_simple(sum(h["noise/trace_sigma"] for h in history),
                                         sum(h["noise/grad_sq"] for h in history))
    if status != "finished":  # a diverged or OOM model has no test result to speak of
        return {**out, "test/loss": nan, "test/acc": nan}
    test, pred, y = evaluate(args, accelerator, model, test_dl, "test")
    if run is not None:
        run.log({"test/confusion_matrix": wandb.plot.confusion_matrix(
            y_true=y.tolist(), preds=pred.tolist(), class_names=classes)})
    return {**out, **test}


def device_name(accelerator):
    if accelerator.device.type == "cuda":
        return torch.cuda.get_device_name(accelerator.device)
    return f"cpu ({os.cpu_count()} cores)"


def main(argv=None):
    try:
        args = parse_args(argv)
        train(args)
    except ConfigError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
