"""Train a timm image classifier under Hugging Face Accelerate and log what Lab 1 asks to W&B.

    python train.py                                   # digits (ships with scikit-learn), ~30 s on 2 CPU cores
    python train.py --batch_size=256 --lr=3e-3        # any flag, as `--key=value` or `--key value`
    python train.py --config my.yaml --epochs 20      # YAML defaults, flags override
    accelerate launch --multi_gpu --num_processes 2 train.py   # one model, data-parallel, one W&B run
    wandb agent ENTITY/PROJECT/SWEEP_ID               # see sweeps/ and sweep.py

Per epoch it logs train/loss, train/acc, val/loss, val/acc, lr, time/epoch_s and throughput/train_img_s
(step metric `epoch`); at the end test/loss, test/acc, time/train_s, time/startup_s, memory/peak_mb and status.
The same numbers go to --output_dir (default runs/<run name>/): config.json, history.csv, summary.json, and the
best model (lowest val/loss) as model.safetensors.

A run that diverges or runs out of memory ends with status diverged or oom and exit code 0: a result, not a
crash. SIGTERM or Ctrl-C ends the current step, saves out/checkpoint/ and exits 128 + signal (status
preempted); the same command again resumes it, as the same W&B run.
"""

import time

START = time.perf_counter()  # seconds; time/startup_s counts imports too

import argparse
import csv
import difflib
import gc
import json
import math
import os
import resource
import shutil
import signal
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
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import broadcast_object_list, set_seed
from tqdm import tqdm

DATASETS = ("digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "imagefolder", "synthetic")
SYNTHETIC_SIZE = 5000  # images in --dataset synthetic: random uint8 RGB at img_size, 10 classes


class ConfigError(Exception):
    """A user mistake: main() prints it as one line and exits with code 2."""


# ----------------------------------------------------------------------------------------------
# Configuration

def str2bool(text):
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(str(text).lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true/false/1/0, got {text!r}")
    return value


def whole(minimum):
    """An argparse type: an int >= minimum, with a message that says what to give instead."""
    def parse(text):
        try:
            value = int(text)
        except (TypeError, ValueError):
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value
    return parse


def positive(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0 such as 0.001, got {text!r}")
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
    flag("--img_size", type=whole(8), default=16, help="pixels; images are resized to img_size x img_size")
    flag("--train_samples", type=whole(0), default=0, help="use only this many training images; 0 = all")
    flag("--val_fraction", type=float, default=0.1, help="of the data held out for validation")
    flag("--test_fraction", type=float, default=0.2, help="held out for test when the dataset has no test split")
    flag("--batch_size", type=whole(1), default=64, help="per process and per micro-batch")
    flag("--epochs", type=whole(1), default=10)
    flag("--lr", type=positive, default=2e-3, help="peak learning rate")
    flag("--optimizer", default="adamw", help="a timm optimizer name: adamw, sgd, adam, lamb, ...")
    flag("--momentum", type=float, default=0.9, help="for sgd and similar")
    flag("--weight_decay", type=float, default=0.05)
    flag("--scheduler", default="cosine", choices=("cosine", "step", "constant"), help="per update, by timm")
    flag("--warmup_epochs", type=whole(0), default=0)
    flag("--label_smoothing", type=float, default=0.0)
    flag("--grad_accum_steps", type=whole(1), default=1)
    flag("--clip_grad", type=float, default=0.0, help="max gradient norm; 0 = off")
    flag("--mixed_precision", default="no", choices=("no", "fp16", "bf16"), help="fp16 needs a CUDA GPU")
    flag("--seed", type=int, default=0, help="fixes the split, the init and the batch order")
    switch("--noise_scale", "log the gradient noise scale noise/b_simple (needs grad_accum_steps >= 2)")
    flag("--early_stopping_patience", type=whole(0), default=0,
         help="stop after this many epochs without a lower val/loss, and test the best epoch's weights; 0 = off")

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
    switch("--log_model", "upload the best model (model.safetensors) to W&B as an artifact")
    flag("--num_workers", type=whole(0), default=0, help="loader workers; in-memory data needs none")
    switch("--cpu", "train on the CPU even when a GPU is present")
    switch("--channels_last", "NHWC memory format for the model and its inputs")
    switch("--compile", "torch.compile the model (through Accelerate's dynamo_backend=inductor)")
    switch("--cudnn_benchmark", "let cuDNN time its kernels for the first batch shapes (CUDA only)")
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
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"bad value for {key!r} in --config {path}: {e}") from None
        if action.choices and out[key] not in action.choices:
            raise ConfigError(f"{key}={value!r} in --config {path}; choose from {list(action.choices)}")
    return out


def check_args(a):
    rules = [
        (0 < a.val_fraction < 1 and 0 < a.test_fraction < 1, "--val_fraction and --test_fraction must be in (0, 1)"),
        (not a.noise_scale or a.grad_accum_steps >= 2,
         "--noise_scale compares micro-batch and accumulated gradients: set --grad_accum_steps 2 or more"),
        (a.mixed_precision != "fp16" or (torch.cuda.is_available() and not a.cpu),
         "--mixed_precision fp16 needs a CUDA GPU; on the CPU use --mixed_precision bf16 or no"),
        (a.dataset in ("digits", "synthetic") or a.download or Path(a.data_dir).exists(),
         f"--data_dir {a.data_dir} does not exist; point it at your {a.dataset} data, or add --download"),
    ]
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)
    if not (a.model in timm.list_models() or timm.is_model(a.model)):
        close = difflib.get_close_matches(a.model, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise ConfigError(f"unknown timm model {a.model!r}; {hint}")


# ----------------------------------------------------------------------------------------------
# Data: small datasets live in memory as uint8 tensors; a whole batch is resized and normalised at once

class TensorImages(torch.utils.data.Dataset):
    def __init__(self, images, labels, img_size, mean, std, memory_format=torch.contiguous_format):
        self.images, self.labels, self.img_size = images, labels, img_size  # images: uint8 (N, C, H, W)
        self.mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
        self.memory_format = memory_format

    def __len__(self):
        return len(self.labels)

    def __getitems__(self, indices):  # DataLoader fetches a batch with one call: no per-sample collate
        indices = torch.as_tensor(indices, device=self.images.device)  # one copy to the GPU, not two
        x = self.images[indices].float().div_(255)
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", antialias=True)
        x = ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        return x, self.labels[indices]

    def __getitem__(self, i):
        x, y = self.__getitems__([i])
        return x[0], y[0]


def keep_batch(batch):
    return batch


def load_arrays(args):
    """-> ({"train": (x, y)} plus "val" and "test" where the dataset has them, class names); x: uint8 NCHW."""
    if args.dataset == "digits":  # 1,797 real 8x8 scans, values 0..16: the file sklearn's load_digits reads
        import importlib.util  # finding the package does not import it (1 s of start-up here)
        path = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0]) / "datasets/data/digits.csv.gz"
        data = np.loadtxt(path, delimiter=",")
        x = np.round(data[:, :-1].reshape(-1, 1, 8, 8) * (255 / 16)).astype(np.uint8)
        return {"train": (x, data[:, -1].astype(int))}, [str(c) for c in range(10)]
    if args.dataset == "synthetic":  # for benchmarks: the shape of real data with none of its cost
        rng = np.random.default_rng(args.seed)
        x = rng.integers(0, 256, (SYNTHETIC_SIZE, 3, args.img_size, args.img_size), dtype=np.uint8)
        return {"train": (x, np.arange(SYNTHETIC_SIZE) % 10)}, [str(c) for c in range(10)]
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
        try:
            ds = ImageFolder(folder, transform=to_tensor, allow_empty=True)
        except (FileNotFoundError, OSError) as e:  # no class subfolders at all
            raise ConfigError(f"--data_dir {folder}: {e}; put each class's images in a subfolder") from None
        empty = sorted(set(ds.classes) - {ds.classes[t] for t in ds.targets})
        if empty:
            raise ConfigError(f"class folder(s) {', '.join(empty)} in {folder} hold no images; "
                              "add images or remove the folder")
        images = []
        for path, _ in ds.samples:
            try:
                images.append(to_tensor(ds.loader(path)))
            except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
                raise ConfigError(f"cannot read image {path} ({type(e).__name__}); fix or remove the file") from None
        return torch.stack(images).numpy(), np.asarray(ds.targets), ds.classes

    splits = ("train", "val", "test") if (root / "train").is_dir() and (root / "test").is_dir() else ()
    if not splits:
        x, y, classes = read(root)
        return {"train": (x, y)}, classes
    parts = {name: read(root / name) for name in splits if (root / name).is_dir()}
    return {name: (x, y) for name, (x, y, _) in parts.items()}, parts["train"][2]


def split_data(args, parts):
    """Carve the splits a dataset lacks out of its train split: stratified by class, fixed by --seed."""
    x, y = parts["train"]
    rng = np.random.default_rng(args.seed)
    idx, held, left = rng.permutation(len(y)), {}, 1.0  # left: the fraction of the data still in idx
    for name, fraction in (("test", args.test_fraction), ("val", args.val_fraction)):
        if name not in parts:
            # the same share of every class, rounded; idx stays shuffled, so --train_samples takes a random subset
            out = np.concatenate([i[:round(fraction / left * len(i))] for i in
                                  (idx[y[idx] == c] for c in np.unique(y))])
            idx, held[name] = idx[~np.isin(idx, out)], out
            left -= fraction
    if args.train_samples:
        idx = idx[:args.train_samples]
    if args.batch_size > len(idx):
        raise ConfigError(f"--batch_size {args.batch_size} is larger than the {len(idx)} training images; "
                          f"use --batch_size {len(idx)} or less")
    held["train"] = idx
    return {**parts, **{name: (x[np.sort(i)], y[np.sort(i)]) for name, i in held.items()}}


def build_datasets(args, splits, data_config, device):
    """-> train, val and test TensorImages on the device, normalised with the model's statistics."""
    mean, std = data_config["mean"], data_config["std"]
    if splits["train"][0].shape[1] == 1:  # a grey image: one channel with the mean of timm's RGB statistics
        mean, std = [float(np.mean(mean))], [float(np.mean(std))]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    def make(images, labels):
        return TensorImages(torch.from_numpy(np.ascontiguousarray(images)).to(device),
                            torch.from_numpy(np.asarray(labels)).long().to(device), args.img_size, mean, std,
                            memory_format)

    return [make(*splits[name]) for name in ("train", "val", "test")]


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

class Stop(Exception):
    """Training ends early: status diverged, oom or preempted, after `step` batches of the epoch."""

    def __init__(self, status, step, **info):
        super().__init__(status)
        self.status, self.step, self.info = status, step, info


class Preemption:
    """SIGTERM (an agent or a cluster stopping the run) and SIGINT (Ctrl-C) only set a flag: training stops
    after the current step, saves a checkpoint and exits, so no step is cut in half."""

    def __init__(self):
        self.signal = None
        self.old = {sig: signal.signal(sig, self.request) for sig in (signal.SIGTERM, signal.SIGINT)}

    def request(self, signum, frame):
        self.signal = signum

    def release(self):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def grad_sq_norm(model):
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.stack(torch._foreach_norm(grads)).float().pow(2).sum()


def train_one_epoch(args, accelerator, model, loader, optimizer, scheduler, epoch, updates, preemption, resumed=None):
    """One pass over this rank's shard (the rest of it after a resume). Raises Stop.
    With --noise_scale it also measures McCandlish et al.'s B_simple."""
    model.train()
    device = accelerator.device
    # loss sum, correct, samples; on resume the main rank carries what the interrupted part of the epoch summed
    restored = torch.tensor(resumed["sums"] if resumed and accelerator.is_main_process else [0.0] * 3, device=device)
    sums = restored.clone()
    noise = torch.zeros(3, device=device)  # sums of the tr(Sigma) and |G|^2 estimates, and their count
    b_small = args.batch_size
    b_big = args.batch_size * args.grad_accum_steps * accelerator.num_processes
    fresh = True  # grads are zero: the next backward gives one micro-batch's gradient
    small = None  # |g|^2 of the first micro-batch of the current accumulation cycle
    step = resumed["step"] if resumed else 0  # batches of this epoch done, the same on every rank
    stopping = False
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
               disable=not (accelerator.is_main_process and sys.stderr.isatty()))  # agent logs get plain lines
    for x, y in bar:
        step += 1
        with accelerator.accumulate(model):
            oom = None
            try:
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            except (torch.OutOfMemoryError, MemoryError):
                oom = memory_now(device)  # the figures at that moment, before anything is freed
            # One all-reduce of 3 numbers per step, before backward's own collectives: every rank then takes
            # the same branch, and none is left waiting in a collective that another has walked away from.
            # It is also this step's only host sync: the loss is checked on the device.
            flags = torch.tensor([oom is not None, False, preemption.signal is not None], device=device).float()
            if oom is None:
                flags[1] = (~torch.isfinite(loss.detach())).float()
            any_oom, diverged, asked = (accelerator.reduce(flags) > 0).tolist()
            if any_oom:
                raise Stop("oom", step, **(oom or memory_now(device)))
            if diverged:
                raise Stop("diverged", step)
            stopping = stopping or asked
            try:
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
            except (torch.OutOfMemoryError, MemoryError):  # one rank alone: the others may wait in all-reduce
                raise Stop("oom", step, **memory_now(device)) from None
            if accelerator.sync_gradients:
                updates += 1
                scheduler.step_update(updates)
        sums += torch.stack([loss.detach().float() * len(y), (logits.argmax(1) == y).sum().float(),
                             loss.new_tensor(float(len(y)))])
        if stopping and accelerator.sync_gradients:  # a whole update done: its state can be saved
            raise Stop("preempted", step, sums=accelerator.reduce(sums).tolist(), updates=updates)
    totals = accelerator.reduce(sums)
    train_s = time.perf_counter() - start  # reduce() synchronised the device
    loss, acc, n = (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item(), totals[2].item()
    trained = n - accelerator.reduce(restored)[2].item()  # images trained in this process's time
    metrics = {"train/loss": loss, "train/acc": acc, "throughput/train_img_s": trained / train_s}
    if args.noise_scale:  # per-cycle means of the two estimates; their ratio is B_simple
        noise = accelerator.reduce(noise, "mean")
        tr_sigma, g2 = (noise[:2] / noise[2].clamp(min=1)).tolist()
        metrics.update({"noise/trace_sigma": tr_sigma, "noise/grad_sq": g2, "noise/b_simple": b_simple(tr_sigma, g2)})
    return metrics, int(sums[2].item() - restored[2].item())


def b_simple(tr_sigma, g2):
    """The simple noise scale; NaN when the |G|^2 estimate is not positive (noise swamps the mean gradient)."""
    return tr_sigma / g2 if g2 > 0 else float("nan")


def grad_scale(accelerator):
    return accelerator.scaler.get_scale() if accelerator.scaler is not None else 1.0


@torch.inference_mode()
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


def start_wandb(args, config, resume_id=None):
    mode, defaulted = wandb_mode(args)
    if mode == "disabled":
        os.environ["WANDB_MODE"] = "disabled"  # wandb.init then returns a no-op run
    run = wandb.init(project=args.wandb_project, entity=args.wandb_entity or None, group=args.wandb_group or None,
                     tags=[t for t in args.wandb_tags.split(",") if t] or None, name=args.run_name or None,
                     config=config, mode=mode, id=resume_id, resume="allow" if resume_id else None)
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


def read_history(path):
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def peak_memory(accelerator):
    """MB: on CUDA the peak torch allocation since the start of training; on CPU the process's peak RSS."""
    if accelerator.device.type == "cuda":
        return {"memory/peak_mb": torch.cuda.max_memory_allocated() / 2**20,
                "memory/peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20}
    return {"memory/peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB


def memory_now(device):
    """MB, at the moment of an out-of-memory error: what is in use, and what the device or host has."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return {"allocated_mb": torch.cuda.memory_allocated(device) / 2**20,
                "reserved_mb": torch.cuda.memory_reserved(device) / 2**20, "free_mb": free / 2**20,
                "total_mb": total / 2**20}
    import psutil
    host = psutil.virtual_memory()
    return {"rss_mb": psutil.Process().memory_info().rss / 2**20, "free_mb": host.available / 2**20,
            "total_mb": host.total / 2**20}


def versions():
    return {"torch": torch.__version__, "timm": timm.__version__, "accelerate": accelerate.__version__,
            "wandb": wandb.__version__}


def read_progress(out):
    """The progress.json of a checkpoint a stopped run left in `out`, or None: its presence means resume."""
    try:
        return json.loads((out / "checkpoint" / "progress.json").read_text())
    except (OSError, ValueError):
        return None


def save_checkpoint(accelerator, out, progress):
    """Model, optimizer, scheduler and RNG states (accelerator.save_state) plus progress.json, written beside
    the old checkpoint and then swapped in, so a kill while saving leaves the old one whole."""
    tmp, final = out / "checkpoint.tmp", out / "checkpoint"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    if accelerator.is_main_process:
        write_json(tmp / "progress.json", progress)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------------------------

def train(args):
    # Everything a user can get wrong is checked before the first file is written.
    set_seed(args.seed)
    parts, classes = load_arrays(args)
    splits = split_data(args, parts)
    del parts
    set_seed(args.seed)
    model = create_model(args, len(classes), in_chans=splits["train"][0].shape[1])

    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available(),  # cpu=True: real gloo ranks
                              mixed_precision=args.mixed_precision,
                              gradient_accumulation_steps=args.grad_accum_steps,
                              dynamo_backend="inductor" if args.compile else "no",
                              # the shuffle order depends on (seed, epoch) only, so a resumed epoch repeats it
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True,
                                                                        data_seed=args.seed))
    main = accelerator.is_main_process
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    data_config = timm.data.resolve_model_data_config(model)  # the model's own normalisation
    train_set, val_set, test_set = build_datasets(args, splits, data_config, accelerator.device)
    del splits
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = timm.optim.create_optimizer_v2(model, opt=args.optimizer, lr=args.lr,
                                               weight_decay=args.weight_decay, momentum=args.momentum)

    def loader(ds, batch_size, shuffle=False):
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle,
                                           collate_fn=keep_batch, num_workers=args.num_workers)

    eval_batch = max(args.batch_size, 512)  # bench/cpu_tactics.py: 512 evaluates 1.3x faster than 64
    model, optimizer, train_dl, val_dl, test_dl = accelerator.prepare(
        model, optimizer, loader(train_set, args.batch_size, shuffle=True), loader(val_set, eval_batch),
        loader(test_set, eval_batch))
    updates_per_epoch = math.ceil(len(train_dl) / args.grad_accum_steps)
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched=args.scheduler, num_epochs=args.epochs,
        warmup_epochs=args.warmup_epochs, decay_epochs=max(1, args.epochs // 3), step_on_epochs=False,
        updates_per_epoch=updates_per_epoch)
    accelerator.register_for_checkpointing(scheduler)

    config = {**vars(args), **versions(),
              "global_batch_size": args.batch_size * accelerator.num_processes * args.grad_accum_steps,
              "num_processes": accelerator.num_processes, "device": device_name(accelerator),
              "num_classes": len(classes), "train_size": len(train_set), "val_size": len(val_set),
              "test_size": len(test_set)}
    # Resuming is automatic: a checkpoint in the output folder means a stopped run to continue.
    out = Path(args.output_dir) if args.output_dir else Path("runs") / args.run_name if args.run_name else None
    progress = read_progress(out) if out else None
    run = start_wandb(args, config, progress and progress["wandb_run_id"]) if main else None
    if out is None:  # runs/<the name W&B gave the run>, the same on every rank
        name = (run.name or f"run-{time.strftime('%Y%m%d_%H%M%S')}") if main else None
        out = Path(broadcast_object_list([str(Path("runs") / name) if main else None])[0])
    history = []
    if progress:
        accelerator.load_state(out / "checkpoint")
        history = [h for h in read_history(out / "history.csv") if h["epoch"] <= progress["epoch"]]
        if main:
            print(f"resuming {out} at epoch {progress['epoch'] + 1}, batch {progress['step']}", flush=True)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if not progress:
            (out / "history.csv").unlink(missing_ok=True)
            (out / "model.safetensors").unlink(missing_ok=True)
        write_json(out / "config.json", config)

    summary = {"status": "finished", "time/startup_s": time.perf_counter() - START}
    start = time.perf_counter()
    preemption = Preemption()
    first = epoch = progress["epoch"] if progress else 0
    try:
        for epoch in range(first, args.epochs):
            resumed = progress if progress and epoch == progress["epoch"] else None
            epoch_start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            train_dl.set_epoch(epoch)
            dl = accelerator.skip_first_batches(train_dl, resumed["step"]) if resumed else train_dl
            dl.set_epoch(epoch)
            updates = resumed["updates"] if resumed else epoch * updates_per_epoch
            metrics, seen = train_one_epoch(args, accelerator, model, dl, optimizer, scheduler, epoch, updates,
                                            preemption, resumed)
            if epoch == 0 and not resumed:  # proves the data is sharded: each rank trains on its own part
                summary["data/samples_per_rank"] = accelerator.gather(
                    torch.tensor([seen], device=accelerator.device)).tolist()
            metrics.update(evaluate(args, accelerator, model, val_dl, "val")[0])
            row = {"epoch": epoch + 1, **metrics, "lr": lr, "time/epoch_s": time.perf_counter() - epoch_start}
            best = min((h["val/loss"] for h in history), default=math.inf)
            history.append(row)
            if row["val/loss"] < best:  # the best model so far, on every rank's call; the main process writes
                accelerator.save_model(model, out)
            if main:
                run.log(row)
                append_history(out / "history.csv", row)
                if not sys.stderr.isatty():
                    print(" ".join(f"{k}={v:.4g}" for k, v in row.items()), flush=True)
            if args.early_stopping_patience and epochs_since_best(history) >= args.early_stopping_patience:
                summary["status"] = "early_stopped"
                break
    except Stop as stop:
        summary.update({"status": stop.status, "stop/epoch": epoch + 1, "stop/step": stop.step})
        if stop.status == "oom":
            summary.update({"oom/batch_size": args.batch_size, **{f"oom/{k}": v for k, v in stop.info.items()}})
        if stop.status == "preempted":
            train_s = time.perf_counter() - start + (progress["train_s"] if progress else 0)
            save_checkpoint(accelerator, out, {"epoch": epoch, "step": stop.step, "updates": stop.info["updates"],
                                               "sums": stop.info["sums"], "train_s": train_s,
                                               "wandb_run_id": run.id if main else None})
    preemption.release()
    if summary["status"] == "oom":  # give the memory back before the final reports
        optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if accelerator.device.type == "cuda":
            torch.cuda.empty_cache()
    summary["time/train_s"] = time.perf_counter() - start + (progress["train_s"] if progress else 0)
    if args.early_stopping_patience and summary["status"] in ("finished", "early_stopped"):
        load_best_model(accelerator, model, out)
    summary.update(final_metrics(args, accelerator, model, test_dl, history, summary["status"], classes, run))
    peak = peak_memory(accelerator)  # the largest over the ranks
    peak_all = accelerator.reduce(torch.tensor(list(peak.values()), device=accelerator.device), "max")
    summary.update(zip(peak, peak_all.tolist(), strict=True))
    if main:
        finish_run(args, run, out, summary, preemption.signal)
    if summary["status"] != "preempted" and main:
        shutil.rmtree(out / "checkpoint", ignore_errors=True)  # ended for good: nothing left to resume
    accelerator.end_training()
    if summary["status"] == "preempted":  # non-zero, as W&B's agent expects of a run it should requeue
        sys.exit(128 + preemption.signal)
    return summary


def epochs_since_best(history):
    losses = [h["val/loss"] if math.isfinite(h["val/loss"]) else math.inf for h in history]
    best = losses.index(min(losses))
    return len(history) - 1 - best


def load_best_model(accelerator, model, out):
    """The lowest-val/loss epoch's weights, which accelerator.save_model wrote to out/model.safetensors."""
    from safetensors.torch import load_file
    accelerator.wait_for_everyone()
    accelerator.unwrap_model(model).load_state_dict(load_file(out / "model.safetensors", device="cpu"))


def finish_run(args, run, out, summary, signum):
    # val/acc and val/loss keep the max and min that define_metric gives them in W&B
    run.summary.update({k: v for k, v in summary.items() if k not in ("val/acc", "val/loss")})
    summary["wandb_run_dir"] = run.settings.sync_dir if run.settings.mode != "disabled" else None
    write_json(out / "summary.json", summary)
    if args.log_model and summary["status"] != "preempted" and (out / "model.safetensors").exists():  # once, at the end
        artifact = wandb.Artifact(f"model-{run.id}", type="model",
                                  metadata={k: summary[k] for k in ("status", "epoch", "val/loss", "test/acc")})
        artifact.add_file(str(out / "model.safetensors"))
        run.log_artifact(artifact, aliases=["best"])
    if summary["status"] == "preempted":
        run.mark_preempting()  # W&B's agent requeues the run; the same command resumes it from out/checkpoint
        print(f"preempted: checkpoint in {out / 'checkpoint'}; run the same command to resume", flush=True)
        run.finish(exit_code=128 + signum)
        return
    run.finish()
    print(f"{summary['status']}: test/acc={summary['test/acc']:.4f} test/loss={summary['test/loss']:.4f} "
          f"time/train_s={summary['time/train_s']:.1f} memory/peak_mb={summary['memory/peak_mb']:.0f} -> {out}")


def final_metrics(args, accelerator, model, test_dl, history, status, classes, run):
    nan = float("nan")
    last = history[-1] if history else {}
    out = {"epoch": len(history), "train/loss": last.get("train/loss", nan), "train/acc": last.get("train/acc", nan),
           "val/acc": max((h["val/acc"] for h in history), default=nan),
           "val/loss": min((h["val/loss"] for h in history), default=nan),
           "throughput/train_img_s": float(np.mean([h["throughput/train_img_s"] for h in history])) if history else nan}
    if args.noise_scale and history:  # over the whole run: the ratio of the summed estimates, far less noisy
        out["noise/b_simple"] = b_simple(sum(h["noise/trace_sigma"] for h in history),
                                         sum(h["noise/grad_sq"] for h in history))
    if status not in ("finished", "early_stopped"):  # diverged, OOM or preempted: no test result to speak of
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
