"""Train a timm image classifier under Hugging Face Accelerate and log what Lab 1 asks to W&B.

    python train.py                                   # digits (ships with scikit-learn), ~30 s on 2 CPU cores
    python train.py --batch_size=256 --lr=3e-3        # any flag, as `--key=value` or `--key value`
    python train.py --config my.yaml --epochs 20      # YAML defaults (W&B's config.yaml too), flags override
    accelerate launch --multi_gpu --num_processes 2 train.py   # one model, data-parallel, one W&B run
    wandb agent ENTITY/PROJECT/SWEEP_ID               # see sweeps/ and sweep.py

Each evaluation point (--evals_per_epoch a epoch) logs train/loss, train/acc, train/lr, val/loss, val/acc,
time/train_s and throughput; the end of the run logs test/loss, test/acc, times, memory and status. The same
numbers go to --output_dir (default runs/<run name>/): config.json, history.csv, summary.json, and the best
model (lowest val/loss) as model.safetensors. INTERFACE.md lists every key.

A run that diverges or runs out of memory ends with status diverged or oom and exit code 0: a result, not a
crash. SIGTERM or Ctrl-C ends the current update, saves out/checkpoint/ and exits 128 + signal (status
preempted); the same command again resumes it, as the same W&B run. The same command after the run ended
does nothing.
"""

import time

START = time.perf_counter()  # seconds; time/startup_s counts imports too

import argparse
import ast
import contextlib
import difflib
import gc
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import accelerate
import timm
import timm.data
import timm.optim
import timm.scheduler
import torch
import torch.nn.functional as F
import wandb
import yaml
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import GradientAccumulationPlugin, broadcast_object_list, set_seed
from tqdm import tqdm

import runfiles
from data import DATASETS, ConfigError, build_datasets, keep_batch, load_splits
from instruments import label_noise_accuracy, sharpness, sharpness_images, use_ghost_batch_norm

# Keys config.json records that are not flags; --config skips them in a W&B config.yaml.
RECORDED = ("torch", "timm", "accelerate", "wandb", "git_commit", "git_dirty", "global_batch_size", "num_processes",
            "device", "num_classes", "train_size", "val_size", "test_size", "label_noise_changed",
            "examples_per_epoch", "updates_per_epoch")
# Flags a resumed run may change: where and how it reports, not what it trains.
REPORTING = ("config", "output_dir", "run_name", "wandb_mode", "wandb_project", "wandb_entity", "wandb_group",
             "wandb_tags", "log_model", "num_workers", "num_threads")
BN_SETTLED = 100  # updates after which batch norm's running statistics (momentum 0.1) forget their start


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
            value = int(str(text))
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value
    return parse


def number(low, high, low_open=False, high_open=True, example="0.1"):
    """An argparse type: a float in [low, high) (or as the flags say), with a message naming the range."""
    def parse(text):
        try:
            value = float(str(text))
        except ValueError:
            value = math.nan
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below):
            span = (f"{'>' if low_open else '>='} {low:g}" if high == math.inf else
                    f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
            raise argparse.ArgumentTypeError(f"expected a number {span} such as {example}, got {text!r}")
        return value
    return parse


positive = number(0, math.inf, low_open=True, example="0.001")


def model_kwargs(text):
    """'key=value,key=value' -> dict, values read as Python literals else kept as text (timm's --model-kwargs)."""
    out = {}
    for item in filter(None, (part.strip() for part in str(text).split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise argparse.ArgumentTypeError(f"expected key=value pairs separated by commas, got {text!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(f"{message} (see python train.py --help)")


def build_parser():
    p = Parser(description="Train a timm classifier; flags are named like W&B sweep parameters.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter,
               allow_abbrev=False)  # a sweep typo such as --lr_ must never match --lr_something

    def switch(group, name, help, default=False):
        group.add_argument(name, type=str2bool, nargs="?", const=True, default=default, help=help)

    hp = p.add_argument_group("hyperparameters (the names sweeps use)")
    flag = hp.add_argument
    flag("--model", default="resnet10t", help="any timm.create_model name")
    flag("--model_kwargs", type=model_kwargs, default={},
         help="more timm.create_model arguments, e.g. norm_layer=groupnorm1 (GroupNorm instead of BatchNorm)")
    switch(hp, "--pretrained", "load timm's weights from the local HF cache or --pretrained_path")
    flag("--pretrained_path", default="", help="weights file (.safetensors/.pth) for --pretrained")
    flag("--dataset", default="digits", choices=DATASETS, help="digits ships with scikit-learn: no download")
    flag("--data_dir", default="data", help="root of torchvision datasets, or the imagefolder folder")
    switch(hp, "--download", "let torchvision download the dataset (needs network)")
    flag("--img_size", type=whole(8), default=16, help="pixels; images are resized to img_size x img_size")
    flag("--train_samples", type=whole(0), default=0, help="use only this many training images; 0 = all")
    flag("--val_fraction", type=number(0, 1, low_open=True), default=0.1, help="of the data held out for validation")
    flag("--test_fraction", type=number(0, 1, low_open=True), default=0.2,
         help="held out for test when the dataset has no test split")
    flag("--label_noise", type=number(0, 1), default=0.0,
         help="fraction of the training labels (never val or test) replaced by another class, fixed by --seed")
    flag("--batch_size", type=whole(1), default=64, help="per process and per micro-batch")
    flag("--ghost_batch_size", type=whole(0), default=0,
         help="ghost batch norm (Hoffer et al. 2017): in training, batch norm normalises each group of this many "
              "images of a process's batch with the group's own statistics; must divide --batch_size; 0 = off")
    flag("--epochs", type=whole(1), default=10, help="passes over the training split; the schedule spans them")
    flag("--max_updates", type=whole(0), default=0,
         help="train for exactly this many optimizer updates instead (the schedule spans them); 0 = use --epochs")
    flag("--lr", type=positive, default=None, help="peak learning rate (default 0.002, or from --lr_base)")
    flag("--lr_base", type=positive, default=None,
         help="peak learning rate at --lr_base_size images a batch, scaled linearly with the global batch "
              "(Goyal et al. 2017; timm's --lr-base): lr = lr_base x global_batch_size / lr_base_size")
    flag("--lr_base_size", type=whole(1), default=256, help="the batch size --lr_base is for")
    flag("--optimizer", default="adamw", help="a timm optimizer name: adamw, sgd, adam, lamb, ...")
    flag("--momentum", type=number(0, 1), default=None, help="for sgd-like optimizers (default 0.9 there)")
    flag("--weight_decay", type=number(0, math.inf, example="0.05"), default=0.05, help="decoupled for adamw")
    flag("--scheduler", default="cosine", choices=("cosine", "step", "constant"), help="per update, by timm")
    flag("--warmup_epochs", type=whole(0), default=0, help="linear lr warm-up, in epochs")
    flag("--label_smoothing", type=number(0, 1), default=0.0, help="of the training loss")
    flag("--grad_accum_steps", type=whole(1), default=None,
         help="micro-batches per update (default: accelerate launch's setting, else 1)")
    flag("--clip_grad", type=number(0, math.inf, example="1.0"), default=0.0, help="max gradient norm; 0 = off")
    flag("--mixed_precision", default=None, choices=("no", "fp16", "bf16"),
         help="default: accelerate launch / accelerate config's setting, else no; fp16 needs a CUDA GPU")
    flag("--seed", type=whole(0), default=0, help="fixes the split, the label noise, the init and the batch order")
    switch(hp, "--noise_scale", "log the gradient noise scale noise/b_simple (needs grad_accum_steps >= 2)")
    flag("--early_stopping_patience", type=whole(0), default=0,
         help="stop after this many evaluation points without a lower val/loss, and test the best point's "
              "weights; 0 = off")

    ev = p.add_argument_group("evaluation")
    flag = ev.add_argument
    switch(ev, "--precise_bn", "recompute batch-norm statistics on the training split before each evaluation "
           "(Wu & Johnson 2021) instead of using the running averages")
    flag("--evals_per_epoch", type=whole(1), default=1, help="validation points per epoch, at evenly spaced updates")
    flag("--target_val_acc", type=number(0, 1, high_open=False), default=0.0,
         help="record the first point with val/acc >= this as target/updates, target/examples, target/train_s; "
              "0 = off")
    switch(ev, "--stop_at_target", "end the run there (status reached_target)")
    flag("--sharpness_every", type=whole(0), default=0,
         help="log sharpness/top_eig, the top eigenvalue of the training loss's Hessian, at every this-many-th "
              "evaluation point and the run's last; 0 = off")
    flag("--sharpness_samples", type=whole(1), default=128,
         help="the fixed random training images (drawn by --seed) sharpness is measured on, as one batch")
    flag("--sharpness_iters", type=whole(1), default=20, help="most Hessian-vector products of the power iteration")

    infra = p.add_argument_group("infrastructure")
    flag = infra.add_argument
    flag("--config", default="", help="YAML file of flag defaults (or a W&B run's config.yaml); flags override it")
    flag("--output_dir", default="", help="default runs/<run name>")
    flag("--run_name", default="", help="W&B run name; also names the default --output_dir")
    flag("--wandb_mode", default="", choices=("", "online", "offline", "disabled"),
         help="default: $WANDB_MODE, else online with an API key and offline without")
    flag("--wandb_project", default="lab1", help="W&B project")
    flag("--wandb_entity", default="", help="W&B user or team; default: your default entity")
    flag("--wandb_group", default="", help="default: $WANDB_RUN_GROUP")
    flag("--wandb_tags", default="", help="comma-separated")
    switch(infra, "--log_model", "upload the best model (model.safetensors) to W&B as an artifact")
    flag("--num_workers", type=whole(0), default=0, help="loader workers; in-memory data needs none")
    flag("--num_threads", type=whole(0), default=0,
         help="CPU threads of torch's ops (torch.set_num_threads), fixed for timing; 0 = torch's default (one a "
              "core); config.json records the count used")
    switch(infra, "--cpu", "train on the CPU even when a GPU is present")
    switch(infra, "--channels_last", "NHWC memory format for the model and its inputs")
    switch(infra, "--compile", "torch.compile the model through Accelerate (default: accelerate launch's "
           "dynamo setting, else off)", default=None)
    switch(infra, "--cudnn_benchmark", "let cuDNN time its kernels for the first batch shapes (CUDA only)")
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
    """Flag defaults from YAML: plain `key: value`, or a W&B run's config.yaml (`key: {value: ...}`)."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read --config {path}: {e}".splitlines()[0]) from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must be a mapping of flag names to values")
    values = {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in values.items()
              if k not in ("wandb_version", "_wandb", "config")}  # W&B's keys, and the file a run was given
    skipped = sorted(k for k in values if k in RECORDED)
    if skipped:
        print(f"train.py: --config {path}: ignoring {', '.join(skipped)} (recorded by a run, not flags)",
              file=sys.stderr)
    actions = {a.dest: a for a in parser._actions}
    out = {}
    for key, value in values.items():
        if key in RECORDED:
            continue
        if key not in actions or key == "help":
            raise ConfigError(f"unknown key {key!r} in --config {path}; use the flag names of --help")
        if key == "model_kwargs" and isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        if isinstance(value, (list, dict)):
            raise ConfigError(f"{key} in --config {path} is a list or mapping; a flag takes one value "
                              "(lists of values to try belong in a sweep file)")
        action = actions[key]
        try:
            out[key] = action.type(value) if action.type and value is not None else value
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"bad value for {key!r} in --config {path}: {e}") from None
        if action.choices and out[key] not in action.choices:
            raise ConfigError(f"{key}={value!r} in --config {path}; choose from {list(action.choices)}")
    return out


def check_args(a):
    """The mistakes a user can make in flags alone, each with its fix."""
    tags = [t.strip() for t in a.wandb_tags.split(",") if t.strip()]
    rules = [
        (a.val_fraction + a.test_fraction < 1, "--val_fraction + --test_fraction must leave images to train on"),
        (a.dataset in ("digits", "synthetic") or a.download or Path(a.data_dir).exists(),
         f"--data_dir {a.data_dir} does not exist; point it at your {a.dataset} data, or add --download"),
        (not (a.output_dir and Path(a.output_dir).exists() and not Path(a.output_dir).is_dir()),
         f"--output_dir {a.output_dir} is a file; give a folder"),
        (all(len(t) <= 64 for t in tags), "W&B tags are at most 64 characters; shorten --wandb_tags"),
        ("/" not in a.wandb_project + a.wandb_entity and a.wandb_project.strip(),
         "--wandb_project and --wandb_entity are single names without '/' (the project gets runs, not paths)"),
        (not a.stop_at_target or a.target_val_acc > 0, "--stop_at_target needs --target_val_acc X"),
        (not a.ghost_batch_size or a.batch_size % a.ghost_batch_size == 0,
         f"--ghost_batch_size {a.ghost_batch_size} does not divide --batch_size {a.batch_size} (the images of one "
         "process's batch); give a divisor of it, or 0 for batch norm over the whole batch"),
        (not (a.ghost_batch_size and a.sharpness_every) or a.sharpness_samples % a.ghost_batch_size == 0,
         f"--sharpness_samples {a.sharpness_samples} is measured as one batch in ghost groups: give a multiple of "
         f"--ghost_batch_size {a.ghost_batch_size}"),
        (a.lr is None or a.lr_base is None, "give --lr or --lr_base, not both"),
        (launcher_setting(a.mixed_precision, "MIXED_PRECISION", "no") != "fp16" or (torch.cuda.is_available()
                                                                                  and not a.cpu),
         "--mixed_precision fp16 needs a CUDA GPU; on the CPU use --mixed_precision bf16 or no"),
        (not a.noise_scale or int(launcher_setting(a.grad_accum_steps, "GRADIENT_ACCUMULATION_STEPS", 1)) >= 2,
         "--noise_scale compares micro-batch and accumulated gradients: set --grad_accum_steps 2 or more"),
        (a.optimizer.lower() in timm.optim.list_optimizers(),
         f"unknown --optimizer {a.optimizer!r}; choose a timm optimizer such as "
         f"{', '.join(difflib.get_close_matches(a.optimizer, timm.optim.list_optimizers(), 3) or ['adamw', 'sgd'])}"),
    ]
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)
    a.wandb_tags = ",".join(tags)
    if a.momentum is not None and a.optimizer.lower() in timm.optim.list_optimizers():
        if not timm.optim.get_optimizer_info(a.optimizer.lower()).has_momentum:
            raise ConfigError(f"--optimizer {a.optimizer} takes no momentum (its betas play that part); "
                              "drop --momentum or use sgd")
    if not (a.model in timm.list_models() or timm.is_model(a.model)):
        close = difflib.get_close_matches(a.model, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise ConfigError(f"unknown timm model {a.model!r}; {hint}")


def launcher_setting(flag, name, default):
    """A flag left unset defers to `accelerate launch` / `accelerate config`, which pass ACCELERATE_<NAME>."""
    return flag if flag is not None else os.environ.get(f"ACCELERATE_{name}", default)


def resolve_accelerate(args, accelerator):
    """Record what Accelerate actually uses, flags and launcher settings resolved."""
    args.mixed_precision = accelerator.mixed_precision
    args.grad_accum_steps = accelerator.gradient_accumulation_steps
    args.compile = accelerator.state.dynamo_plugin.backend.value.lower() != "no"


# ----------------------------------------------------------------------------------------------
# Model

def create_model(args, num_classes, in_chans):
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, **args.model_kwargs)
    path = None
    if args.pretrained:
        path = args.pretrained_path or cached_weights(args.model)  # a file, so timm never reaches for the hub
        if not path:
            raise ConfigError(f"no local weights for {args.model}: run timm.create_model('{args.model}', "
                              "pretrained=True) once on a machine with network to fill the Hugging Face cache, "
                              "or pass --pretrained_path FILE")
        if not Path(path).is_file():
            raise ConfigError(f"--pretrained_path {path} is not a file")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=path))
    try:
        model = timm.create_model(args.model, **kwargs)
    except Exception as e:  # a user's weights file or model arguments that do not fit: whatever timm raises
        if not (path or args.model_kwargs):
            raise
        what = (f"load {path} into {args.model}" if path
                else f"build {args.model} with --model_kwargs {args.model_kwargs}")
        raise ConfigError(f"cannot {what}: {str(e).splitlines()[0][:200]}") from None
    if path:
        check_weights_loaded(model, args, {k: v for k, v in kwargs.items() if "pretrained" not in k}, path)
    model = check_input_size(model, args, in_chans)
    if args.ghost_batch_size:
        use_ghost_batch_norm(model, args.ghost_batch_size, args.model)
    return model


def check_weights_loaded(model, args, kwargs, path):
    """timm loads pretrained weights non-strictly when the classifier changes, so a file of another model's
    weights can load nothing at all. Of the tensors whose init is random (it changes with the seed), most must
    differ from the init this run would have had."""
    with torch.random.fork_rng():
        inits = []
        for seed in (args.seed, args.seed + 1):
            torch.manual_seed(seed)
            inits.append(dict(timm.create_model(args.model, **kwargs).named_parameters()))
    head = {id(p) for p in model.get_classifier().parameters()} if hasattr(model, "get_classifier") else set()
    drawn = [(name, p) for name, p in model.named_parameters()
             if id(p) not in head and not torch.equal(inits[0][name], inits[1][name])]
    kept = [name for name, p in drawn if torch.equal(p, inits[0][name])]
    if len(kept) > len(drawn) // 2:
        raise ConfigError(f"cannot load {path} into {args.model}: it holds no weights for {len(kept)} of its "
                          f"{len(drawn)} initialised tensors (such as {kept[0]}); is it another model's?")


def check_input_size(model, args, in_chans):
    """One forward pass of one image at --img_size, so a model that cannot take that size fails here, in one
    line naming a size it can take, and not after the run has started."""
    def runs_at(size):
        try:
            with torch.inference_mode():
                model.eval()(torch.zeros(1, in_chans, size, size))
            return True
        except (RuntimeError, AssertionError, ValueError):
            return False
        finally:
            model.train()

    if runs_at(args.img_size):
        return model
    default = getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1]
    sizes = sorted({default, *(args.img_size * 2 ** k for k in range(1, 6))})
    works = next((s for s in sizes if s > args.img_size and runs_at(s)), None)
    need = f"it runs at --img_size {works}" if works else f"its default input is {default} px"
    raise ConfigError(f"{args.model} cannot run at --img_size {args.img_size}: {need} "
                      "(ViTs also take --model_kwargs img_size=N)")


def cached_weights(model_name):
    """The file of timm's weights for model_name in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache
    cfg = timm.models.get_pretrained_cfg(model_name)
    for filename in ("model.safetensors", "pytorch_model.bin") if cfg and cfg.hf_hub_id else ():
        path = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(path, str):
            return path
    return None


def batch_norms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


# ----------------------------------------------------------------------------------------------
# Train and evaluate

class Stop(Exception):
    """Training ends before its last epoch: a status from runfiles.STATUSES, at batch `step` of the epoch."""

    def __init__(self, status, step, **info):
        super().__init__(status)
        self.status, self.step, self.info = status, step, info


class Preemption:
    """SIGTERM (an agent or a cluster stopping the run) and SIGINT (Ctrl-C) only set a flag: training stops
    after the current update and saves a checkpoint; after training, the run just finishes. Installed from
    the end of argument parsing until the process ends, so no signal cuts setup, the test evaluation or
    W&B's finish in half."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request)

    def request(self, signum, frame):
        self.signal = self.signal or signum


def is_oom(error):
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def grad_sq_norm(model):
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.stack(torch._foreach_norm(grads)).float().pow(2).sum()


def grad_scale(accelerator):
    return accelerator.scaler.get_scale() if accelerator.scaler is not None else 1.0


def b_simple(tr_sigma, g2):
    """The simple noise scale; NaN when the |G|^2 estimate is not positive (noise swamps the mean gradient)."""
    return tr_sigma / g2 if g2 > 0 else float("nan")


class NoiseScale:
    """McCandlish et al. 2018's B_simple = tr(Sigma)/|G|^2, from |g|^2 of the first micro-batch of each update
    (B = batch_size) and of the accumulated, all-reduced gradient (B = global batch)."""

    def __init__(self, args, accelerator):
        self.on, self.accelerator, self.accum = args.noise_scale, accelerator, args.grad_accum_steps
        self.b_small = args.batch_size
        self.b_big = args.batch_size * args.grad_accum_steps * accelerator.num_processes
        self.sums = torch.zeros(3, device=accelerator.device)  # tr(Sigma) and |G|^2 estimates, their count
        self.small = None  # |g|^2 of the current update's first micro-batch
        self.fresh = True  # grads are zero: the next backward gives one micro-batch's gradient

    def after_backward(self, model):
        acc = self.accelerator
        if not self.on:
            return
        if self.fresh and not acc.sync_gradients:
            # Accelerate divides the loss by grad_accum_steps; undo that to get one micro-batch's |g|^2.
            self.small = grad_sq_norm(model) * (self.accum / grad_scale(acc)) ** 2
        self.fresh = acc.sync_gradients  # after this update's zero_grad the next backward starts a cycle
        if acc.sync_gradients and self.small is not None:
            big = grad_sq_norm(model) / grad_scale(acc) ** 2
            b, B = self.b_small, self.b_big
            self.sums += torch.stack([(self.small - big) / (1 / b - 1 / B), (B * big - b * self.small) / (B - b),
                                      torch.ones_like(big)])
            self.small = None

    def interval(self):
        """Per-update means of the two estimates since the last call, and their ratio; resets."""
        if not self.on:
            return {}
        sums = self.accelerator.reduce(self.sums, "mean")
        self.sums.zero_()
        tr_sigma, g2 = (sums[:2] / sums[2].clamp(min=1)).tolist()
        return {"noise/trace_sigma": tr_sigma, "noise/grad_sq": g2, "noise/b_simple": b_simple(tr_sigma, g2)}


class SavedTensors:
    """The bytes autograd keeps for backward (activations: what grows with batch size), parameters excluded.
    Each storage counts once, however many views of it are saved."""

    def __init__(self, model):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages = {}

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.params:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)

    def mb(self):
        return sum(self.storages.values()) / 2**20


@torch.inference_mode()
def evaluate(accelerator, model, loader, prefix):
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
    model.train()
    loss, pred, y = torch.cat(losses).float(), torch.cat(preds), torch.cat(labels)
    return {f"{prefix}/loss": loss.mean().item(), f"{prefix}/acc": (pred == y).float().mean().item()}, pred, y


def eval_batch_size(args):
    return max(args.batch_size, 512)  # bench/cpu_tactics.py: 512 evaluates 1.3x faster than 64


def precise_bn_batch(args, train_size, processes):
    """Images in each batch of the precise-BN pass: evaluation's batch, at most one process's share of the
    training split, in whole ghost groups (batch_size, which they divide, is at most that share)."""
    size = max(1, min(eval_batch_size(args), train_size // processes))
    return size - size % args.ghost_batch_size if args.ghost_batch_size else size


def recompute_batch_norm(accelerator, model, loader):
    """Precise BN (Wu & Johnson 2021): each batch-norm layer's statistics become the plain average over the
    training split, in train mode without gradients, instead of the running average of the last updates."""
    torch.optim.swa_utils.update_bn(loader, accelerator.unwrap_model(model))


def average_batch_norm(accelerator, model):
    """Every rank evaluates with the same statistics (their mean), so the gathered evaluation is one model's.
    DDP only broadcasts rank 0's buffers at the next training forward."""
    if accelerator.num_processes == 1:
        return
    for bn in batch_norms(model):
        for buf in (bn.running_mean, bn.running_var):
            if buf is not None:
                buf.copy_(accelerator.reduce(buf, "mean"))


# ----------------------------------------------------------------------------------------------
# A run: setup, the training loop, finish

class Training:
    """One run: its Accelerator, model, data, W&B run and output folder, and the counters the loop keeps."""

    def __init__(self, args):
        # Everything a user can get wrong is checked before the first file is written.
        self.args = args
        self.build()
        self.open_folder()

    def build(self):
        """Data, model, Accelerator, optimizer, loaders and schedule."""
        args = self.args
        if args.num_threads:
            torch.set_num_threads(args.num_threads)
        args.num_threads = torch.get_num_threads()  # recorded: time and throughput depend on it
        set_seed(args.seed)
        splits, self.classes = load_splits(args)
        set_seed(args.seed)
        model = create_model(args, len(self.classes), in_chans=splits["train"][0].shape[1])
        plugin = GradientAccumulationPlugin(num_steps=args.grad_accum_steps) if args.grad_accum_steps else None
        acc = self.accelerator = Accelerator(
            cpu=args.cpu or not torch.cuda.is_available(),  # cpu=True: real gloo ranks on a CPU machine
            mixed_precision=args.mixed_precision,  # None: what `accelerate launch` or `accelerate config` set
            gradient_accumulation_plugin=plugin,
            dynamo_backend=None if args.compile is None else "inductor" if args.compile else "no",
            # the shuffle order depends on (seed, epoch) only, so a resumed epoch repeats it
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed))
        resolve_accelerate(args, acc)
        self.main = acc.is_main_process
        if acc.device.type == "cuda":
            torch.backends.cudnn.benchmark = args.cudnn_benchmark
        train_set, val_set, test_set = build_datasets(args, splits, timm.data.resolve_model_data_config(model),
                                                      acc.device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.has_bn = bool(batch_norms(model))
        self.saved = SavedTensors(model)
        global_batch = args.batch_size * acc.num_processes * args.grad_accum_steps
        args.lr = args.lr_base * global_batch / args.lr_base_size if args.lr_base else args.lr or 2e-3
        try:
            optimizer = timm.optim.create_optimizer_v2(model, opt=args.optimizer, lr=args.lr,
                                                       weight_decay=args.weight_decay,
                                                       **({} if args.momentum is None else {"momentum": args.momentum}))
        except (AssertionError, ImportError, ValueError) as e:  # CUDA-only or uninstalled optimizers
            raise ConfigError(f"--optimizer {args.optimizer} cannot run here ({e}); try adamw or sgd") from None

        def loader(ds, batch_size, shuffle=False, drop_last=False):
            return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                                               collate_fn=keep_batch, num_workers=args.num_workers)

        eval_batch = eval_batch_size(args)
        # The training loader drops a short last batch, as the reference scripts do: a batch of one image
        # breaks batch norm, and every update then sees batch_size images.
        self.model, self.optimizer, self.train_dl, self.val_dl, self.test_dl, self.bn_dl = acc.prepare(
            model, optimizer, loader(train_set, args.batch_size, shuffle=True, drop_last=True),
            loader(val_set, eval_batch), loader(test_set, eval_batch),
            loader(train_set, precise_bn_batch(args, len(train_set), acc.num_processes), drop_last=True))
        if len(self.train_dl) == 0:
            raise ConfigError(f"--batch_size {args.batch_size} x {acc.num_processes} processes is more than the "
                              f"{len(train_set)} training images; use a smaller --batch_size")
        self.instruments(args, splits, train_set, loader(train_set, eval_batch))
        per_epoch = self.updates_per_epoch = math.ceil(len(self.train_dl) / args.grad_accum_steps)
        if args.max_updates:  # the epochs it starts, the last one cut short
            args.epochs = math.ceil(args.max_updates / per_epoch)
        self.total_updates = args.max_updates or args.epochs * per_epoch
        # evaluation points: evenly spaced updates of each epoch, the last one at its end, and the last update
        k = min(args.evals_per_epoch, per_epoch)
        self.eval_at = {round(per_epoch * j / k) for j in range(1, k + 1)}
        self.scheduler, _ = timm.scheduler.create_scheduler_v2(  # in updates: the schedule spans total_updates
            self.optimizer, sched=args.scheduler, num_epochs=self.total_updates,
            warmup_epochs=args.warmup_epochs * per_epoch, decay_epochs=max(1, args.epochs // 3) * per_epoch,
            step_on_epochs=False, updates_per_epoch=1)
        acc.register_for_checkpointing(self.scheduler)
        self.sizes = {"train_size": len(train_set), "val_size": len(val_set), "test_size": len(test_set)}

    def instruments(self, args, splits, train_set, train_eval_loader):
        """The fixed images sharpness is measured on, and with label noise the true training labels and a loader
        over the training split in its order (for train/acc_clean, train/acc_noisy)."""
        if args.sharpness_every:
            if args.sharpness_samples > len(train_set):
                raise ConfigError(f"--sharpness_samples {args.sharpness_samples} is more than the {len(train_set)} "
                                  "training images; give fewer")
            self.sharpness_batch = sharpness_images(train_set, args.sharpness_samples, args.seed)
        if args.label_noise:
            self.true_labels = torch.as_tensor(splits["train_true_labels"], device=train_set.labels.device)
            self.train_eval_dl = self.accelerator.prepare(train_eval_loader)

    def open_folder(self):
        """The run's config, its output folder (resumed, or started afresh) and its W&B run."""
        args, acc = self.args, self.accelerator
        self.config = {**vars(args), **versions(), **git_info(),
                       "global_batch_size": args.batch_size * acc.num_processes * args.grad_accum_steps,
                       "num_processes": acc.num_processes, "device": device_name(acc),
                       "num_classes": len(self.classes), **self.sizes, "updates_per_epoch": self.updates_per_epoch,
                       "examples_per_epoch": len(self.train_dl) * args.batch_size * acc.num_processes,
                       "label_noise_changed": round(args.label_noise * self.sizes["train_size"])}
        self.out = Path(args.output_dir) if args.output_dir else Path("runs") / args.run_name if args.run_name else None
        self.progress = None
        if self.out:
            self.check_folder()
        self.history = []
        if self.progress:
            acc.load_state(self.out / "checkpoint")
            self.history = [h for h in runfiles.read_history(self.out / runfiles.HISTORY)
                            if h["update"] <= self.progress["updates"]]
        resume_id = self.progress and self.progress["wandb_run_id"]
        self.run = start_wandb(args, self.config, resume_id) if self.main else None
        if self.out is None:  # runs/<W&B's folder name>, the same on every rank
            self.out = Path(broadcast_object_list([str(Path("runs") / run_folder(self.run)) if self.main else None])[0])
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not self.progress:  # a fresh start: nothing of an earlier attempt stays beside it
                for name in (runfiles.HISTORY, runfiles.SUMMARY, "model.safetensors"):
                    (self.out / name).unlink(missing_ok=True)
            runfiles.write_json(self.out / runfiles.CONFIG, self.config)
            if self.progress:
                runfiles.write_history(self.out / runfiles.HISTORY, self.history)  # drops rows past the checkpoint
                # the preempted part's summary: once this part trains past it, it describes nothing in the folder
                (self.out / runfiles.SUMMARY).unlink(missing_ok=True)
                print(f"resuming {self.out} at epoch {self.progress['epoch'] + 1}, batch {self.progress['step']}",
                      flush=True)

    def check_folder(self):
        """A checkpoint in the output folder means a stopped run to resume with the same flags; a summary
        without one, a run that already ended (raises Done)."""
        out, args = self.out, self.args
        if self.main:
            finish_cut_swap(out)
        self.accelerator.wait_for_everyone()
        self.progress = runfiles.read_json(out / "checkpoint" / "progress.json")
        summary = runfiles.read_json(out / runfiles.SUMMARY)
        if not self.progress and summary and summary.get("status") != "preempted":
            raise Done(f"{out} already holds a run that ended ({summary.get('status')}): nothing to do; delete the "
                       "folder or choose another --output_dir to run again")
        if self.progress:
            then = self.progress["flags"]
            now = {k: v for k, v in vars(args).items() if k not in REPORTING}
            differ = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
            if differ:
                was = ", ".join(f"{k}={then.get(k)}" for k in differ)
                raise ConfigError(f"{out} holds a checkpoint of a run with {was}; resume it with the same flags, "
                                  "or choose another --output_dir to start a new run")

    def train(self, preemption):
        """The epoch loop, evaluating at each point; -> the summary."""
        args, acc, p = self.args, self.accelerator, self.progress or {}
        self.preemption = preemption
        self.noise = NoiseScale(args, acc)
        self.updates, self.examples = p.get("updates", 0), p.get("examples", 0)
        self.clock = {"train": 0.0, "eval": 0.0, "precise_bn": 0.0, "sharpness": 0.0, **p.get("clock", {})}
        self.activations_mb = p.get("activations_mb", math.nan)
        self.bn_fresh_at = None  # the update at which batch norm was last recomputed
        self.lr = self.optimizer.param_groups[0]["lr"]
        # loss sum, correct, images since the last point; on resume the main rank carries the interrupted ones
        self.sums = torch.tensor(p["sums"] if p and self.main else [0.0] * 3, device=acc.device)
        summary = {"status": "finished", "time/startup_s": time.perf_counter() - START}
        first, step = p.get("epoch", 0), p.get("step", 0)
        epoch = first
        self.t0 = time.perf_counter() - p.get("interval_s", 0.0)  # seconds: the interval resumed, as trained
        try:
            for epoch in range(first, args.epochs):
                self.train_dl.set_epoch(epoch)
                loader = acc.skip_first_batches(self.train_dl, step) if step else self.train_dl
                loader.set_epoch(epoch)
                bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
                           disable=not (self.main and sys.stderr.isatty()))  # agent logs get plain lines only
                for x, y in bar:
                    step += 1
                    self.train_step(x, y, step)
                    if not acc.sync_gradients:
                        continue
                    self.updates += 1
                    last = self.updates == self.total_updates
                    if last or self.updates - epoch * self.updates_per_epoch in self.eval_at:
                        self.evaluation_point(step)
                    if last:
                        break
                    if self.stopping:  # a whole update is done: its state can be saved
                        raise Stop("preempted", step)
                if epoch == 0 and not p:  # proves the data is sharded: each rank trains on its own part
                    summary["data/samples_per_rank"] = acc.gather(
                        torch.tensor([step * args.batch_size], device=acc.device)).tolist()
                step = 0
        except Stop as stop:
            summary.update({"status": stop.status, "stop/epoch": epoch + 1, "stop/step": stop.step})
            if stop.status == "oom":
                summary.update({"oom/batch_size": args.batch_size, **{f"oom/{k}": v for k, v in stop.info.items()}})
            elapsed = time.perf_counter() - self.t0  # the interval cut short
            if stop.status == "preempted":
                error = self.save_checkpoint(epoch, stop.step, elapsed)
                summary.update({"checkpoint_error": error} if error else {})
            else:
                self.examples += int(acc.reduce(self.sums)[2].item())
            self.clock["train"] += elapsed
        return summary

    def train_step(self, x, y, step):
        """One micro-batch: forward, the ranks' agreement on how to go on, backward, and the update when due.
        Raises Stop (oom, diverged)."""
        args, acc, model = self.args, self.accelerator, self.model
        first = self.updates == 0 and step == 1 and not self.progress and not args.compile
        with acc.accumulate(model):
            oom = None
            try:
                with self.saved.hooks() if first else contextlib.nullcontext():
                    logits = model(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            except (RuntimeError, MemoryError) as e:
                if not is_oom(e):
                    raise
                oom = memory_now(acc.device)  # the figures at that moment, before anything is freed
            # One all-reduce of 3 numbers per step, before backward's own collectives: every rank then takes
            # the same branch, and none is left waiting in a collective that another has walked away from.
            # It is also this step's only host sync: the loss is checked on the device.
            flags = torch.tensor([oom is not None, False, self.preemption.signal is not None], device=acc.device)
            if oom is None:
                flags[1] = ~torch.isfinite(loss.detach())
            any_oom, diverged, asked = (acc.reduce(flags.float()) > 0).tolist()
            if any_oom:
                raise Stop("oom", step, **(oom or memory_now(acc.device)))
            if diverged:
                raise Stop("diverged", step)
            self.stopping = asked
            if first:
                self.activations_mb = self.saved.mb()
            try:
                acc.backward(loss)
                self.noise.after_backward(model)
                if acc.sync_gradients:
                    if args.clip_grad:
                        acc.clip_grad_norm_(model.parameters(), args.clip_grad)
                    self.lr = self.optimizer.param_groups[0]["lr"]
                self.optimizer.step()
                self.optimizer.zero_grad()
            except (RuntimeError, MemoryError) as e:  # one rank alone: the others may wait in all-reduce
                if not is_oom(e):
                    raise
                raise Stop("oom", step, **memory_now(acc.device)) from None
            if acc.sync_gradients:
                self.scheduler.step_update(self.updates + 1)
        self.sums += torch.stack([loss.detach().float() * len(y), (logits.argmax(1) == y).sum().float(),
                                  loss.new_tensor(float(len(y)))])

    def evaluation_point(self, step):
        """Close the training interval, evaluate on validation, and record one history row."""
        args, acc = self.args, self.accelerator
        loss_sum, correct, n = acc.reduce(self.sums).tolist()  # synchronises the device: the clock is exact
        interval_s = time.perf_counter() - self.t0
        self.clock["train"] += interval_s
        self.sums.zero_()
        self.examples += int(n)
        row = {"epoch": self.updates / self.updates_per_epoch, "update": self.updates, "examples": self.examples,
               "train/loss": loss_sum / n, "train/acc": correct / n, "train/lr": self.lr}
        row.update(self.evaluate(self.val_dl, "val")[0])
        row.update({"time/train_s": self.clock["train"], "throughput/train_img_s": n / interval_s,
                    **self.noise.interval(), **self.memorisation(), **self.measure_sharpness()})
        best = min((h["val/loss"] for h in self.history), default=math.inf)
        self.history.append(row)
        if row["val/loss"] < best:  # the best model so far, on every rank's call; the main process writes
            acc.save_model(self.model, self.out)
        if self.main:
            self.run.log(row)
            runfiles.write_history(self.out / runfiles.HISTORY, self.history)
            tqdm.write(" ".join(f"{k}={v:.4g}" for k, v in row.items()))
        self.t0 = time.perf_counter()
        reached = args.target_val_acc and row["val/acc"] >= args.target_val_acc
        if reached and args.stop_at_target:
            raise Stop("reached_target", step)
        if args.early_stopping_patience and points_since_best(self.history) >= args.early_stopping_patience:
            raise Stop("early_stopped", step)

    def memorisation(self):
        """With --label_noise: train/acc_clean, train/acc_noisy, train/acc_noisy_true, in evaluation mode as val/*
        (timed as evaluation). Raises Stop (oom)."""
        if not self.args.label_noise:
            return {}
        _, pred, labels = self.evaluate(self.train_eval_dl, "label_noise")  # gathered in the split's order
        return label_noise_accuracy(pred, labels, self.true_labels)

    def measure_sharpness(self):
        """sharpness/top_eig at every --sharpness_every-th evaluation point and the run's last update, timed apart
        from training and evaluation (time/sharpness_s). Raises Stop (oom)."""
        args, acc = self.args, self.accelerator
        point = len(self.history) + 1  # this evaluation point's number, counted from 1
        if not args.sharpness_every or (point % args.sharpness_every and self.updates < self.total_updates):
            return {}
        start = time.perf_counter()
        try:
            eig = sharpness(acc.unwrap_model(self.model), *self.sharpness_batch, args.sharpness_iters, args.seed,
                            args.label_smoothing)
        except (RuntimeError, MemoryError) as e:
            if not is_oom(e):
                raise
            raise Stop("oom", 0, phase="sharpness", **memory_now(acc.device)) from None
        self.clock["sharpness"] += time.perf_counter() - start
        return {"sharpness/top_eig": eig}

    def evaluate(self, loader, prefix):
        """evaluate(), after precise BN when asked; both timed apart from training. Raises Stop (oom)."""
        start = time.perf_counter()
        try:
            if self.args.precise_bn and self.bn_fresh_at != self.updates:
                recompute_batch_norm(self.accelerator, self.model, self.bn_dl)
                self.bn_fresh_at = self.updates
                self.clock["precise_bn"] += time.perf_counter() - start
                start = time.perf_counter()
            average_batch_norm(self.accelerator, self.model)
            result = evaluate(self.accelerator, self.model, loader, prefix)
        except (RuntimeError, MemoryError) as e:
            if not is_oom(e):
                raise
            raise Stop("oom", 0, phase=prefix, **memory_now(self.accelerator.device)) from None
        self.clock["eval"] += time.perf_counter() - start
        return result

    def save_checkpoint(self, epoch, step, interval_s):
        """Model, optimizer, scheduler and RNG states (accelerator.save_state) plus progress.json, written beside
        the old checkpoint and swapped in; progress.json is written last, so its presence means whole.
        -> "" when saved, else why not (a full disk: the run then cannot resume, but nothing crashes)."""
        acc, out = self.accelerator, self.out
        progress = {"epoch": epoch, "step": step, "updates": self.updates, "examples": self.examples,
                    "sums": acc.reduce(self.sums).tolist(), "clock": self.clock, "interval_s": interval_s,
                    "activations_mb": self.activations_mb,
                    "flags": {k: v for k, v in vars(self.args).items() if k not in REPORTING},
                    "wandb_run_id": self.run.id if self.main else None}
        tmp = out / "checkpoint.tmp"
        error = ""
        try:
            if self.main:
                remove_checkpoint(tmp)
            acc.wait_for_everyone()
            acc.save_state(tmp)
            acc.wait_for_everyone()
            if self.main:
                runfiles.write_json(tmp / "progress.json", progress)
                swap_in_checkpoint(out)
        except Exception as e:  # a full disk (torch.save says so as a RuntimeError): no half checkpoint is left
            error = f"checkpoint not saved ({type(e).__name__}: {str(e).splitlines()[0][:160]}); the run cannot resume"
            if self.main:
                remove_checkpoint(tmp)
                print(error, file=sys.stderr, flush=True)
        acc.wait_for_everyone()
        return error

    def finish(self, summary):
        """Test metrics, memory and the summary, in W&B and summary.json; the checkpoint goes once the run has
        ended for good. -> the summary."""
        args, acc, status = self.args, self.accelerator, summary["status"]
        if status == "oom":  # give the memory back before the final reports
            self.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if acc.device.type == "cuda":
                torch.cuda.empty_cache()
        if args.early_stopping_patience and status in runfiles.COMPLETED and self.history:
            load_best_model(acc, self.model, self.out)
            self.bn_fresh_at = self.updates  # the saved weights carry their own point's batch-norm statistics
        summary.update(self.final_metrics(status))
        if status in runfiles.COMPLETED:
            try:
                test, pred, y = self.evaluate(self.test_dl, "test")
                summary.update(test)
                if self.main:
                    self.run.log({"test/confusion_matrix": wandb.plot.confusion_matrix(
                        y_true=y.tolist(), preds=pred.tolist(), class_names=self.classes)})
            except Stop as stop:
                summary.update({"status": "oom", "oom/phase": "test", "oom/batch_size": args.batch_size,
                                **{f"oom/{k}": v for k, v in stop.info.items() if k != "phase"}})
        peak = peak_memory(acc)  # the largest over the ranks
        summary.update(zip(peak, acc.reduce(torch.tensor(list(peak.values()), device=acc.device), "max").tolist(),
                           strict=True))
        if self.main:
            finish_run(args, self.run, self.out, summary, self.preemption.signal)
            if summary["status"] != "preempted":
                remove_checkpoint(self.out / "checkpoint")  # ended for good: nothing left to resume
            if self.has_bn and not args.precise_bn and self.updates < BN_SETTLED and status in runfiles.COMPLETED:
                print(f"note: evaluation used batch-norm running statistics from only {self.updates} updates; "
                      "--precise_bn recomputes them on the training data", flush=True)
        acc.end_training()
        return summary

    def final_metrics(self, status):
        nan, h = float("nan"), self.history
        last = h[-1] if h else {}
        out = {"epoch": self.updates / self.updates_per_epoch, "update": self.updates, "examples": self.examples,
               "train/loss": last.get("train/loss", nan), "train/acc": last.get("train/acc", nan),
               "val/acc": max((r["val/acc"] for r in h), default=nan),
               "val/loss": min((r["val/loss"] for r in h), default=nan),
               "val/acc_final": last.get("val/acc", nan), "val/loss_final": last.get("val/loss", nan),
               "test/loss": nan, "test/acc": nan,
               "time/train_s": self.clock["train"], "time/eval_s": self.clock["eval"],
               "time/precise_bn_s": self.clock["precise_bn"], "time/sharpness_s": self.clock["sharpness"],
               "throughput/train_img_s": self.examples / self.clock["train"] if self.clock["train"] else nan,
               "memory/activations_mb": self.activations_mb}
        if self.args.target_val_acc:
            hit = next((r for r in h if r["val/acc"] >= self.args.target_val_acc), {})
            out.update({f"target/{k}": hit.get(key, nan) for k, key in
                        (("updates", "update"), ("examples", "examples"), ("train_s", "time/train_s"),
                         ("epoch", "epoch"))})
        # the last value of each instrument logged at some points only, as W&B's summary keeps it
        out.update({k: v for r in h for k, v in r.items() if k.startswith(("sharpness/", "train/acc_"))})
        if self.args.noise_scale and h:  # over the whole run: the ratio of the summed estimates, far less noisy
            out["noise/b_simple"] = b_simple(sum(r["noise/trace_sigma"] for r in h), sum(r["noise/grad_sq"] for r in h))
        return out


class Done(Exception):
    """The output folder holds a run that already ended: the same command again has nothing to do."""


def points_since_best(history):
    losses = [h["val/loss"] if math.isfinite(h["val/loss"]) else math.inf for h in history]
    return len(history) - 1 - losses.index(min(losses))


def load_best_model(accelerator, model, out):
    """The lowest-val/loss point's weights, which accelerator.save_model wrote to out/model.safetensors."""
    from safetensors.torch import load_file
    accelerator.wait_for_everyone()
    accelerator.unwrap_model(model).load_state_dict(load_file(out / "model.safetensors", device="cpu"))


# ----------------------------------------------------------------------------------------------
# Checkpoints: the swap is two renames, and progress.json goes first when one is deleted, so that a kill at
# any moment leaves either a whole checkpoint (with progress.json) or none

def finish_cut_swap(out):
    """A whole checkpoint.tmp (it has progress.json) beside no whole checkpoint/: a kill cut the swap short."""
    if not (out / "checkpoint" / "progress.json").exists() and (out / "checkpoint.tmp" / "progress.json").exists():
        swap_in_checkpoint(out)


def swap_in_checkpoint(out):
    final, old = out / "checkpoint", out / "checkpoint.old"
    remove_checkpoint(old)
    if final.exists():
        final.rename(old)
    (out / "checkpoint.tmp").rename(final)
    remove_checkpoint(old)


def remove_checkpoint(folder):
    (folder / "progress.json").unlink(missing_ok=True)  # first: a half-deleted checkpoint is never resumed
    shutil.rmtree(folder, ignore_errors=True)


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
    init = dict(project=args.wandb_project, entity=args.wandb_entity or None, group=args.wandb_group or None,
                tags=args.wandb_tags.split(",") if args.wandb_tags else None, name=args.run_name or None,
                config=config, id=resume_id, resume="allow" if resume_id else None)
    if mode == "online" and "WANDB_INIT_TIMEOUT" not in os.environ:
        init["settings"] = wandb.Settings(init_timeout=30)  # seconds; W&B's own 90 s is long to learn "no network"
    try:
        run = wandb.init(mode=mode, **init)
    except (wandb.errors.CommError, wandb.errors.AuthenticationError, TimeoutError) as e:
        if mode != "online":
            raise
        # no network, or a key W&B refuses: the run is still recorded, offline, and can be uploaded later
        print(f"wandb: cannot reach W&B ({str(e).splitlines()[0][:120]}); logging offline instead", flush=True)
        run, defaulted = wandb.init(mode="offline", **{k: v for k, v in init.items() if k != "settings"}), True
    run.define_metric("epoch")
    for key in ("train/*", "val/*", "time/train_s", "throughput/*", "noise/*", "sharpness/*", "update",
                "examples"):
        run.define_metric(key, step_metric="epoch")
    run.define_metric("val/acc", summary="max")
    run.define_metric("val/loss", summary="min")
    if defaulted:
        print(f"wandb: offline: run saved in {run.settings.sync_dir}; "
              f"upload it with `wandb sync {run.settings.sync_dir}`", flush=True)
    return run


def run_folder(run):
    """The output folder's name: W&B's own run folder name (run-<time>-<id>), or a new one like it."""
    name = Path(run.settings.sync_dir or "").name if run.settings.mode != "disabled" else ""
    return name.removeprefix("offline-") if name.startswith(("run-", "offline-run-")) else \
        f"run-{time.strftime('%Y%m%d_%H%M%S')}-{run.id}"


def peak_memory(accelerator):
    """MB: on CUDA the peak torch allocation since the start; on CPU the process's peak RSS."""
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


def git_info():
    """The commit of this train.py's checkout, and whether it had changes; "" outside a git checkout."""
    def git(*argv):
        return subprocess.run(["git", *argv], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=30)
    try:
        commit = git("rev-parse", "HEAD")
        if commit.returncode != 0:
            return {"git_commit": "", "git_dirty": ""}
        return {"git_commit": commit.stdout.strip(), "git_dirty": bool(git("status", "--porcelain").stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "", "git_dirty": ""}


def device_name(accelerator):
    if accelerator.device.type == "cuda":
        return torch.cuda.get_device_name(accelerator.device)
    return f"cpu ({os.cpu_count()} cores)"


def finish_run(args, run, out, summary, signum):
    # val/acc and val/loss keep the max and min that define_metric gives them in W&B
    run.summary.update({k: v for k, v in summary.items() if k not in ("val/acc", "val/loss")})
    summary["wandb_run_dir"] = run.settings.sync_dir if run.settings.mode != "disabled" else None
    runfiles.write_json(out / runfiles.SUMMARY, summary)
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
          f"time/train_s={summary['time/train_s']:.1f} memory/peak_mb={summary['memory/peak_mb']:.0f} -> {out}",
          flush=True)


def main(argv=None):
    try:
        args = parse_args(argv)
        preemption = Preemption()  # from here a signal stops training cleanly, even one sent during setup
        training = Training(args)
    except ConfigError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Done as e:
        print(f"train.py: {e}", file=sys.stderr)
        return None
    summary = training.finish(training.train(preemption))
    if summary["status"] == "preempted":  # non-zero, as W&B's agent expects of a run it should requeue
        sys.exit(128 + training.preemption.signal)
    return summary


if __name__ == "__main__":
    main()
