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
preempted); the line it prints says what resumes it, as the same W&B run: the same command when the folder was
known before the run started (--output_dir, --run_name, $WANDB_RUN_ID as wandb agent sets it). The same command
after the run ended does nothing.
"""

import time

START = time.perf_counter()  # seconds; time/startup_s counts imports too

import argparse
import ast
import contextlib
import ctypes
import difflib
import gc
import json
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import yaml

import runfiles
from data import (
    DATASETS,
    BadData,
    ConfigError,
    Mix,
    augmentation,
    checked,
    in_order,
    keep_freed_memory,
    load_data,
    pair,
)

# Keys config.json records that are not flags; --config skips them in a W&B config.yaml.
RECORDED = ("torch", "timm", "accelerate", "wandb", "git_commit", "git_dirty", "global_batch_size", "num_processes",
            "device", "num_classes", "train_size", "val_size", "test_size", "label_noise_changed",
            "examples_per_epoch", "updates_per_epoch", "data_path", "data_path_why", "data_workers", "augmentation",
            "onednn_max_cpu_isa", "git_commits")
# Flags a resumed run may change: where and how it reports, not what it trains.
REPORTING = ("config", "output_dir", "run_name", "wandb_mode", "wandb_project", "wandb_entity", "wandb_group",
             "wandb_tags", "log_model", "workers", "num_workers", "cache_dir", "allow_code_change",
             "num_threads", "keep_freed_memory")
CODE = ("git_commit", "git_dirty")  # what a resume checks of the code, unless --allow_code_change
RESUMABLE = (runfiles.PREEMPTED, runfiles.FAILED)  # a checkpoint stays: the same command resumes
BEST = {"val/acc": "max", "val/loss": "min"}  # summary.json's and W&B's val/acc and val/loss: the best point's
BN_SETTLED = 100  # updates after which batch norm's running statistics (momentum 0.1) forget their start
PARENT = os.getppid()  # the process that started this one; a launcher that dies before Preemption is noticed


class ReaderMayLeave:
    """sys.stdout or sys.stderr of a run whose reader may go away (`python train.py | head`): once a write finds
    the pipe closed, the stream's descriptor points at /dev/null and the run goes on to its end, with its results
    in its files and W&B. Only the output is cut short, and without a traceback."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self.reader_left()
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except BrokenPipeError:
            self.reader_left()

    def reader_left(self):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self.stream.fileno())
        os.close(null)

    def __getattr__(self, name):
        return getattr(self.stream, name)


# ----------------------------------------------------------------------------------------------
# Configuration

def str2bool(text):
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(str(text).lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true/false/1/0, got {text!r}")
    return value


def whole(minimum, maximum=math.inf):
    """An argparse type: an int in [minimum, maximum], with a message that says what to give instead."""
    def parse(text):
        try:
            value = int(str(text))
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            span = f">= {minimum}" if maximum == math.inf else f"in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"expected a whole number {span}, got {text!r}")
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


def tag_list(text):
    """' a , b ,' -> 'a,b': W&B tags, comma-separated, blanks dropped."""
    return ",".join(t.strip() for t in str(text).split(",") if t.strip())


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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default, once: a help text that gives its own (one resolved later) keeps it."""

    def _get_help_string(self, action):
        return action.help if "(default: " in action.help else super()._get_help_string(action)


def build_parser():
    p = Parser(description="Train a timm classifier; flags are named like W&B sweep parameters.",
               formatter_class=HelpFormatter,
               allow_abbrev=False)  # a sweep typo such as --lr_ must never match --lr_something

    def switch(group, name, help, default=False):
        group.add_argument(name, type=str2bool, nargs="?", const=True, default=default, help=help)

    hp = p.add_argument_group("hyperparameters (the names sweeps use)")
    flag = hp.add_argument
    flag("--model", default="resnet10t", help="any timm.create_model name")
    flag("--model_kwargs", type=model_kwargs, default={},
         help="more timm.create_model arguments, e.g. norm_layer=groupnorm1 (GroupNorm instead of BatchNorm) "
              "(default: none)")
    switch(hp, "--pretrained", "load timm's weights from the local HF cache or --pretrained_path")
    flag("--pretrained_path", default="", help="weights file (.safetensors/.pth) for --pretrained (default: none)")
    flag("--dataset", default="digits", choices=list(DATASETS),
         help="digits ships with scikit-learn: no download; imagefolder and wds read --data_dir")
    flag("--data_dir", default="data", help="root of torchvision datasets, the imagefolder folder, or the wds shards")
    flag("--data_in_memory", default="auto", choices=("auto", "true", "false"),
         help="hold the decoded data in memory (on the GPU when there is one), or stream it through timm's "
              "transforms in --workers processes; auto: in memory when it fits 1/4 of the free memory")
    switch(hp, "--download", "let torchvision download the dataset (needs network)")
    flag("--img_size", type=whole(8, 2**14), default=16, help="pixels; images are resized to img_size x img_size")
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
    flag("--lr", type=positive, default=None, help="peak learning rate (default: 0.002, or from --lr_base)")
    flag("--lr_base", type=positive, default=None,
         help="peak learning rate at --lr_base_size images a batch, scaled linearly with the global batch "
              "(Goyal et al. 2017; timm's --lr-base): lr = lr_base x global_batch_size / lr_base_size "
              "(default: none, --lr)")
    flag("--lr_base_size", type=whole(1), default=256, help="the batch size --lr_base is for")
    flag("--optimizer", default="adamw", help="a timm optimizer name: adamw, sgd, adam, lamb, ...")
    flag("--momentum", type=number(0, 1), default=None, help="for sgd-like optimizers (default: 0.9 there)")
    flag("--weight_decay", type=number(0, math.inf, example="0.05"), default=0.05, help="decoupled for adamw")
    flag("--scheduler", default="cosine", choices=("cosine", "step", "constant"), help="per update, by timm")
    flag("--warmup_epochs", type=whole(0), default=0, help="linear lr warm-up, in epochs")
    flag("--label_smoothing", type=number(0, 1), default=0.0, help="of the training loss")
    flag("--grad_accum_steps", type=whole(1), default=None,
         help="micro-batches per update (default: 1, or accelerate launch's --gradient_accumulation_steps, "
              "which Accelerate passes on only under DeepSpeed)")
    flag("--clip_grad", type=number(0, math.inf, example="1.0"), default=0.0, help="max gradient norm; 0 = off")
    flag("--mixed_precision", default=None, choices=("no", "fp16", "bf16"),
         help="fp16 needs a CUDA GPU (default: accelerate launch's or accelerate config's setting, else no)")
    flag("--seed", type=whole(0, 2**32 - 1), default=0,  # numpy's seeds are 32-bit
         help="fixes the split, the label noise, the init and the batch order")

    aug = p.add_argument_group("augmentation (named as timm's train.py names it; all off by default)")
    flag = aug.add_argument
    flag("--hflip", type=number(0, 1, high_open=False, example="0.5"), default=0.0,
         help="probability of a horizontal flip")
    flag("--scale", type=pair, default=None,
         help="random-resized crop: the range of the crop's area, as a fraction of the image, e.g. 0.08,1 "
              "(default: none, no crop)")
    flag("--ratio", type=pair, default=None, help="the crop's aspect-ratio range with --scale (default: 0.75,1.33)")
    flag("--aa", default="", help="timm's RandAugment/AutoAugment spec, e.g. rand-m9-mstd0.5-inc1 or original "
         "(default: none)")
    flag("--reprob", type=number(0, 1, high_open=False, example="0.25"), default=0.0,
         help="random-erasing probability")
    flag("--mixup", type=number(0, math.inf, example="0.8"), default=0.0, help="mixup alpha; 0 = off")
    flag("--cutmix", type=number(0, math.inf, example="1.0"), default=0.0, help="cutmix alpha; 0 = off")
    flag = hp.add_argument
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
    flag("--config", default="", help="YAML file of flag defaults (or a run's config.json, or W&B's config.yaml); "
         "flags override it (default: none)")
    flag("--output_dir", default="", help="(default: runs/<run name>, else runs/<$WANDB_RUN_ID>, else "
         "runs/<W&B's run folder name>)")
    flag("--run_name", default="", help="W&B run name; also names the default --output_dir (default: W&B's)")
    flag("--wandb_mode", default="", choices=("", "online", "offline", "disabled"),
         metavar="{online,offline,disabled}",
         help="(default: $WANDB_MODE, else online with an API key and offline without)")
    flag("--wandb_project", default="lab1", help="W&B project")
    flag("--wandb_entity", default="", help="W&B user or team (default: your default entity)")
    flag("--wandb_group", default="", help="(default: $WANDB_RUN_GROUP)")
    flag("--wandb_tags", type=tag_list, default="", help="comma-separated (default: none)")
    switch(infra, "--log_model", "upload the best model (model.safetensors) to W&B as an artifact")
    switch(infra, "--allow_code_change", "resume a checkpoint made by other code (another git commit, or "
           "uncommitted changes); config.json's git_commits then lists every commit the run trained under")
    flag("--workers", "--num_workers", type=whole(0, 1024), default=None,
         help="data-loading processes (default: 0 in memory, none needed; min(4, cores) streaming)")
    flag("--cache_dir", default="", help="where image folders decoded for memory are kept "
         "(default: $XDG_CACHE_HOME/lab1/decoded, else ~/.cache/lab1/decoded)")
    flag("--num_threads", type=whole(0), default=0,
         help="CPU threads of torch's ops (torch.set_num_threads), fixed for timing; 0 = torch's default (one a "
              "core); config.json records the count used")
    switch(infra, "--cpu", "train on the CPU even when a GPU is present")
    switch(infra, "--channels_last", "NHWC memory format for the model and its inputs")
    switch(infra, "--compile", "torch.compile the model through Accelerate (default: accelerate launch's "
           "--dynamo_backend, else off)", default=None)
    switch(infra, "--keep_freed_memory", "CPU runs: glibc's malloc keeps freed memory in its heap for reuse instead "
           "of returning it to the kernel, so no update faults its activations in anew (faster; peak host memory "
           "higher); config.json records whether it applied", default=True)
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
    if "parameters" in values and ("method" in values or "program" in values):
        raise ConfigError(f"--config {path} is a W&B sweep file: run it with `python sweep.py {path}` or "
                          "`wandb sweep`; --config takes flag: value lines")
    values = {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in values.items()
              if k not in ("wandb_version", "_wandb", "config")}  # W&B's keys, and the file a run was given
    skipped = sorted(k for k in values if k in RECORDED)
    # a run's record (config.json, W&B's config.yaml) holds the lr its --lr_base gave: the flag is lr_base
    derived = ["lr"] if skipped and values.get("lr_base") is not None else []
    if skipped:
        print(f"train.py: --config {path}: ignoring {', '.join(derived + skipped)} (recorded by a run, not flags)",
              file=sys.stderr)
    actions = {a.dest: a for a in parser._actions}
    actions.update({s.lstrip("-"): a for a in parser._actions for s in a.option_strings if s.startswith("--")})
    out = {}
    for key, value in values.items():
        if key in RECORDED or key in derived:
            continue
        if key not in actions or key == "help":
            raise ConfigError(f"unknown key {key!r} in --config {path}; use the flag names of --help")
        if key == "model_kwargs" and isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        if actions[key].type is pair and isinstance(value, list):  # a run's config.json records (0.08, 1) as a list
            value = ",".join(map(str, value))
        if isinstance(value, (list, dict)):
            raise ConfigError(f"{key} in --config {path} is a list or mapping; a flag takes one value "
                              "(lists of values to try belong in a sweep file)")
        action, key = actions[key], actions[key].dest  # an old name (num_workers) sets its flag (workers)
        try:
            out[key] = action.type(value) if action.type and value is not None else value
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"bad value for {key!r} in --config {path}: {e}") from None
        if action.choices and out[key] not in action.choices:
            raise ConfigError(f"{key}={value!r} in --config {path}; choose from {list(action.choices)}")
    return out


def check_args(a):
    """The mistakes a user can make in flags alone, each with its fix."""
    rules = [
        (a.val_fraction + a.test_fraction < 1, "--val_fraction + --test_fraction must leave images to train on"),
        (not DATASETS[a.dataset].reads_data_dir or a.download or Path(a.data_dir).exists(),
         f"--data_dir {a.data_dir} does not exist; point it at your {a.dataset} data"
         + (", or add --download" if DATASETS[a.dataset].downloads else "")),
        (a.pretrained or not a.pretrained_path,
         f"--pretrained_path {a.pretrained_path} is read only with --pretrained: add --pretrained, or drop the path"),
        (all(len(t) <= 64 for t in a.wandb_tags.split(",")),
         "W&B tags are at most 64 characters; shorten --wandb_tags"),
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
        (not (a.mixup or a.cutmix) or a.batch_size % 2 == 0,
         "--mixup and --cutmix pair each image with another of its batch: use an even --batch_size"),
        (not a.aa or valid_aa(a.aa), f"--aa {a.aa!r} is not a timm augmentation spec; try rand-m9-mstd0.5-inc1, "
         "augmix-m5-w3, or original"),
        (launcher_setting(a.mixed_precision, "MIXED_PRECISION", "no") != "fp16" or (torch.cuda.is_available()
                                                                                  and not a.cpu),
         "--mixed_precision fp16 needs a CUDA GPU; on the CPU use --mixed_precision no (bf16 runs on a CPU too, "
         "but usually several times slower)"),
        (not a.noise_scale or int(launcher_setting(a.grad_accum_steps, "GRADIENT_ACCUMULATION_STEPS", 1)) >= 2,
         "--noise_scale compares micro-batch and accumulated gradients: set --grad_accum_steps 2 or more"),
        (a.optimizer.lower() in timm.optim.list_optimizers(),
         f"unknown --optimizer {a.optimizer!r}; choose a timm optimizer such as "
         f"{', '.join(difflib.get_close_matches(a.optimizer, timm.optim.list_optimizers(), 3) or ['adamw', 'sgd'])}"),
    ]
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)
    check_output_dir(chosen_output_dir(a) or "runs")
    if a.cache_dir:
        check_output_dir(a.cache_dir, "--cache_dir")
    if (a.wandb_mode or os.environ.get("WANDB_MODE")) == "online" and not wandb.login(prompt=False, verify=False):
        raise ConfigError("W&B online mode needs an API key: run `wandb login` or set WANDB_API_KEY, or use "
                          "--wandb_mode offline (uploaded later with wandb sync)")
    if a.momentum is not None and a.optimizer.lower() in timm.optim.list_optimizers():
        if not timm.optim.get_optimizer_info(a.optimizer.lower()).has_momentum:
            raise ConfigError(f"--optimizer {a.optimizer} takes no momentum (its betas play that part); "
                              "drop --momentum or use sgd")
    if not (a.model in timm.list_models() or timm.is_model(a.model)):
        close = difflib.get_close_matches(a.model, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise ConfigError(f"unknown timm model {a.model!r}; {hint}")


def chosen_output_dir(args):
    """The output folder known before the run starts: --output_dir, else runs/<--run_name>, else runs/<W&B run id>
    when $WANDB_RUN_ID gives it (wandb agent does, so that a requeued run finds its checkpoint); None: the folder
    is runs/<W&B's run folder name>, new for each run."""
    name = args.run_name or os.environ.get("WANDB_RUN_ID")
    return Path(args.output_dir) if args.output_dir else Path("runs") / name if name else None


def check_output_dir(path, name="--output_dir"):
    """A folder the run will write can be made and written to: raises ConfigError naming what stops it (a file on
    its path, no permission, a read-only disk, a name too long), before anything is written or W&B starts."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ConfigError(f"{name} {shown} is not valid UTF-8, which W&B and the run's JSON files need; "
                          "give a folder with a UTF-8 name") from None
    path = existing = Path(path)
    while True:  # the deepest part of the path that exists
        try:
            if existing.exists():
                break
        except OSError:  # no permission to look inside its parent, or a name too long: the checks below say
            pass
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{name} {path} is a file; give a folder" if existing == path else
                          f"{name} {path}: {existing} is a file; give a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = ("is on a read-only disk" if os.statvfs(existing).f_flag & os.ST_RDONLY else
               "is not writable (no permission)")
        raise ConfigError(f"{name} {path}: {existing} {why}; give a folder you can write to")
    limit = os.pathconf(existing, "PC_NAME_MAX")  # bytes a file name may take, 255 on Linux file systems
    for part in path.relative_to(existing).parts:
        if len(os.fsencode(part)) > limit:
            raise ConfigError(f"{name} {path}: the name {part[:16]}... is too long ({len(os.fsencode(part))} "
                              f"bytes; at most {limit}); give a shorter --output_dir or --run_name")


def valid_aa(spec):
    try:
        timm.data.create_transform(32, is_training=True, auto_augment=spec)
        return True
    except Exception:  # timm's parsers raise AssertionError, KeyError or ValueError for a bad spec
        return False


def launcher_setting(flag, name, default):
    """A flag left unset defers to `accelerate launch` / `accelerate config`, which pass ACCELERATE_<NAME>."""
    return flag if flag is not None else os.environ.get(f"ACCELERATE_{name}", default)


def on_cpu(args):
    return bool(args.cpu or not torch.cuda.is_available())


def make_accelerator(args):
    plugin = GradientAccumulationPlugin(num_steps=args.grad_accum_steps) if args.grad_accum_steps else None
    return Accelerator(
        cpu=on_cpu(args),  # cpu=True: real gloo ranks on a CPU machine
        mixed_precision=args.mixed_precision,  # None: what `accelerate launch` or `accelerate config` set
        gradient_accumulation_plugin=plugin,
        dynamo_backend=None if args.compile is None else "inductor" if args.compile else "no",
        # the shuffle order depends on (seed, epoch) only, so a resumed epoch repeats it
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed))


def resolve(flags, accelerator, updates_per_epoch):
    """The configuration the run trains with (config.json records it), computed once; the flags stay as given.
    What Accelerate resolved: mixed precision, accumulation steps and compile, flags and launcher settings
    together; the peak lr (from --lr_base: the linear scaling rule); the epochs --max_updates starts; the CPU
    threads torch uses (--num_threads, else its default: time and throughput depend on it)."""
    accum = accelerator.gradient_accumulation_steps
    global_batch = flags.batch_size * accelerator.num_processes * accum
    return argparse.Namespace(**{
        **vars(flags),
        "mixed_precision": accelerator.mixed_precision, "grad_accum_steps": accum,
        "compile": accelerator.state.dynamo_plugin.backend.value.lower() != "no",
        "lr": flags.lr_base * global_batch / flags.lr_base_size if flags.lr_base else flags.lr or 2e-3,
        "epochs": math.ceil(flags.max_updates / updates_per_epoch) if flags.max_updates else flags.epochs,
        "num_threads": torch.get_num_threads()})


if __name__ == "__main__":
    sys.stdout, sys.stderr = ReaderMayLeave(sys.stdout), ReaderMayLeave(sys.stderr)
    if {"-h", "--help"} & set(sys.argv[1:]):  # answered before timm, accelerate and wandb are imported (seconds)
        parse_args()

import accelerate
import timm
import timm.data
import timm.optim
import timm.scheduler
import torch
import torch.nn.functional as F
import wandb
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import GradientAccumulationPlugin, broadcast_object_list, set_seed
from safetensors import SafetensorError
from tqdm import tqdm
from wandb.sdk.mailbox.mailbox_handle import HandleAbandonedError

from instruments import label_noise_accuracy, sharpness, sharpness_images, use_ghost_batch_norm

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
    check_input_size(model, args, in_chans)
    check_one_image_trains(model, args, in_chans)
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
        return
    default = getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1]
    sizes = sorted({default, *(args.img_size * 2 ** k for k in range(1, 6))})
    works = next((s for s in sizes if s > args.img_size and runs_at(s)), None)
    need = f"it runs at --img_size {works}" if works else f"its default input is {default} px"
    raise ConfigError(f"{args.model} cannot run at --img_size {args.img_size}: {need} "
                      "(ViTs also take --model_kwargs img_size=N)")


def check_one_image_trains(model, args, in_chans):
    """Batch norm cannot train on 1 value per channel: with --batch_size 1 (images per process and micro-batch)
    and feature maps that end at 1x1, one training forward pass fails here, in one line, not in the first step.
    The pass uses copies of the buffers and of the random state, so the model stays as it was."""
    if args.batch_size > 1 or not batch_norms(model):
        return
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    try:
        with torch.no_grad(), torch.random.fork_rng():
            image = torch.zeros(1, in_chans, args.img_size, args.img_size)
            torch.func.functional_call(model.train(), buffers, (image,))
    except ValueError as e:
        raise ConfigError(f"batch norm cannot train on 1 image per process at --img_size {args.img_size} "
                          f"({str(e).splitlines()[0][:80]}); use --batch_size 2 or more, or a model without batch "
                          "norm (--model_kwargs norm_layer=groupnorm1)") from None


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
        if status not in runfiles.STATUSES:
            raise ValueError(f"Stop({status!r}): not a status word of runfiles.STATUSES")
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
        if "TORCHELASTIC_RUN_ID" in os.environ and sys.platform == "linux":
            # A rank of `accelerate launch`: the launcher forwards a SIGTERM it gets, but when it dies without
            # doing so (SIGKILL after a grace period, the OOM killer), the kernel sends this rank SIGTERM, so it
            # saves its part of the checkpoint instead of training on, orphaned.
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != PARENT:  # the launcher died before that
                self.request(signal.SIGTERM, None)

    def request(self, signum, frame):
        self.signal = self.signal or signum


# How backends word out-of-memory in a plain RuntimeError: the CPU allocator ("can't allocate memory"), oneDNN
# (creating a primitive allocates its memory), CUDA kernels, MPS and XPU ("out of memory"), cuBLAS and cuDNN
# handles (..._ALLOC_FAILED), and C++'s std::bad_alloc.
OOM_WORDS = ("can't allocate memory", "could not create a primitive", "out of memory", "_ALLOC_FAILED",
             "std::bad_alloc")


def is_oom(error):
    """CUDA's OutOfMemoryError, Python's MemoryError, or a RuntimeError in any backend's words for it."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).replace("could not create a primitive descriptor", "")  # oneDNN: unsupported, not memory
    return isinstance(error, RuntimeError) and any(words in text for words in OOM_WORDS)


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
    """One run: its Accelerator, model, data, W&B run and output folder. Where the loop is lives in one object,
    self.state (runfiles.Progress: what a checkpoint's progress.json holds); the other attributes set in
    __init__ are what the loop derives from it or measures between two evaluation points."""

    def __init__(self, flags, preemption):
        # Everything a user can get wrong is checked before the first file is written.
        self.preemption = preemption
        self.build(flags)
        self.open_folder()
        acc, state = self.accelerator, self.state
        # loss sum, correct, images since the last point, on the device; on resume the main rank carries them
        self.sums = torch.tensor(state.sums if self.main else [0.0] * 3, device=acc.device)
        self.t0 = None  # perf_counter() at the start of the interval since the last point
        self.lr = self.optimizer.param_groups[0]["lr"]  # of the last update
        self.noise = NoiseScale(self.args, acc)
        self.bn_fresh_at = None  # the update at which batch norm was last recomputed
        self.stopping = False  # every rank has agreed to stop after this update (a signal)
        self.compiled = not self.args.compile  # torch.compile has compiled the training step (compile_first)

    def build(self, flags):
        """Data, model, Accelerator, loaders, the resolved configuration (self.args), optimizer and schedule."""
        if flags.num_threads:
            torch.set_num_threads(flags.num_threads)
        set_seed(flags.seed)
        self.cpu_isa = without_amx() if on_cpu(flags) else ""  # before the model and Accelerate touch oneDNN
        data = self.data = load_data(flags)
        self.classes, self.sizes = data.classes, data.sizes
        if int(os.environ.get("RANK", 0)) == 0:  # which path, and why, once (before the Accelerator exists)
            print(f"data: {'in memory' if data.path == 'memory' else f'streamed by {data.workers} workers'}: "
                  f"{data.why}" + (f"; {data.cache}" if data.cache else ""), flush=True)
        set_seed(flags.seed)
        model = create_model(flags, len(self.classes), in_chans=data.in_chans)
        acc = self.accelerator = make_accelerator(flags)
        self.main = acc.is_main_process
        if acc.device.type == "cuda":
            torch.backends.cudnn.benchmark = flags.cudnn_benchmark
        kept_freed = acc.device.type == "cpu" and flags.keep_freed_memory and keep_freed_memory()
        if flags.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.has_bn = bool(batch_norms(model))
        self.saved = SavedTensors(model)
        self.mix = Mix(flags, len(self.classes))
        loaders = data.loaders(flags, timm.data.resolve_model_data_config(model), acc.device, acc.num_processes)
        self.train_dl, self.val_dl, self.test_dl, self.bn_dl = acc.prepare(*loaders)
        if len(self.train_dl) == 0:
            raise ConfigError(f"--batch_size {flags.batch_size} x {acc.num_processes} processes is more than the "
                              f"{self.sizes['train_size']} training images; use a smaller --batch_size")
        self.instruments(flags, val=loaders[1], bn=loaders[3])
        per_epoch = self.updates_per_epoch = math.ceil(len(self.train_dl) / acc.gradient_accumulation_steps)
        args = self.args = resolve(flags, acc, per_epoch)
        args.keep_freed_memory = kept_freed  # what applied: not on a GPU, nor where the user set glibc's variables
        self.global_batch = args.batch_size * acc.num_processes * args.grad_accum_steps
        self.model, self.optimizer = acc.prepare(model, create_optimizer(args, model))
        self.total_updates = args.max_updates or args.epochs * per_epoch
        # evaluation points: evenly spaced updates of each epoch, the last one at its end, and the last update
        k = min(args.evals_per_epoch, per_epoch)
        self.eval_at = {round(per_epoch * j / k) for j in range(1, k + 1)}
        self.scheduler, _ = timm.scheduler.create_scheduler_v2(  # in updates: the schedule spans total_updates
            self.optimizer, sched=args.scheduler, num_epochs=self.total_updates,
            warmup_epochs=args.warmup_epochs * per_epoch, decay_epochs=max(1, args.epochs // 3) * per_epoch,
            step_on_epochs=False, updates_per_epoch=1)
        acc.register_for_checkpointing(self.scheduler)
        warmup = args.warmup_epochs * per_epoch
        if warmup >= self.total_updates and self.main:  # update k trains at the lr of step k - 1: below the peak
            print(f"note: --warmup_epochs {args.warmup_epochs} ({warmup} updates) does not end within the run's "
                  f"{args.epochs} epochs ({self.total_updates} updates): the lr never reaches its peak {args.lr:g}",
                  flush=True)

    def instruments(self, flags, val, bn):
        """The fixed images sharpness is measured on, and with label noise the true training labels and a loader
        over the training split in its order, read as validation is (for train/acc_clean, train/acc_noisy).
        val and bn: data.loaders' validation and precise-BN loaders (the training images without augmentation)."""
        train_set, acc = bn.dataset, self.accelerator
        if flags.sharpness_every:
            if flags.sharpness_samples > len(train_set):
                raise ConfigError(f"--sharpness_samples {flags.sharpness_samples} is more than the {len(train_set)} "
                                  "training images; give fewer")
            self.sharpness_batch = sharpness_images(train_set, flags.sharpness_samples, flags.seed, acc.device)
        if flags.label_noise:
            self.true_labels = torch.as_tensor(self.data.splits["train_true_labels"], device=acc.device)
            self.train_eval_dl = acc.prepare(in_order(train_set, like=val))

    def open_folder(self):
        """The run's config, its output folder (resumed, or started afresh), its W&B run and self.state."""
        args, acc = self.args, self.accelerator
        self.code = git_info()
        self.config = {**vars(args), **versions(), **self.code, "global_batch_size": self.global_batch,
                       "num_processes": acc.num_processes, "device": device_name(acc),
                       "num_classes": len(self.classes), **self.sizes, "updates_per_epoch": self.updates_per_epoch,
                       "examples_per_epoch": len(self.train_dl) * args.batch_size * acc.num_processes,
                       "label_noise_changed": round(args.label_noise * self.sizes["train_size"]),
                       "data_path": self.data.path, "data_path_why": self.data.why, "data_workers": self.data.workers,
                       "augmentation": augmentation(args), "onednn_max_cpu_isa": self.cpu_isa}
        self.out = chosen_output_dir(args)
        resumed = self.check_folder() if self.out else None
        self.resumed = resumed is not None
        self.history = []
        if resumed:
            acc.load_state(self.out / runfiles.CHECKPOINT)
            self.history = [h for h in runfiles.read_history(self.out / runfiles.HISTORY)
                            if h["update"] <= resumed.updates]
        self.run = start_wandb(args, self.config, resumed and resumed.wandb_run_id) if self.main else None
        self.state = resumed or runfiles.Progress(flags=self.trained_flags(),
                                                  wandb_run_id=self.run.id if self.main else None)
        if self.out is None:  # runs/<W&B's folder name>, the same on every rank
            self.out = Path(broadcast_object_list([str(Path("runs") / run_folder(self.run)) if self.main else None])[0])
        if self.main:
            with writing(self.out):
                self.start_files(resumed)

    def start_files(self, resumed):
        """The output folder as this start of the run begins it; on resume, W&B gets again the points it lost."""
        self.out.mkdir(parents=True, exist_ok=True)
        if not resumed:  # a fresh start: nothing of an earlier attempt stays beside it
            for name in (runfiles.HISTORY, runfiles.SUMMARY, runfiles.MODEL):
                (self.out / name).unlink(missing_ok=True)
        runfiles.write_json(self.out / runfiles.CONFIG, self.config)
        if resumed:
            runfiles.write_history(self.out / runfiles.HISTORY, self.history)  # drops rows past the checkpoint
            # the preempted part's summary: once this part trains past it, it describes nothing in the folder
            (self.out / runfiles.SUMMARY).unlink(missing_ok=True)
            lost = relog_lost_points(self.run, self.history)
            print(f"resuming {self.out} at epoch {resumed.epoch + 1}, batch {resumed.step}"
                  + (f"; {lost} points W&B had lost logged again" if lost else ""), flush=True)

    def trained_flags(self):
        """What changes what is trained, which a resume must give the same: the resolved flags, the processes and
        the global batch they make, and the code (git_commit, git_dirty)."""
        return {**{k: v for k, v in vars(self.args).items() if k not in REPORTING},
                "num_processes": self.accelerator.num_processes, "global_batch_size": self.global_batch, **self.code}

    def check_folder(self):
        """A checkpoint in the output folder means a stopped run to resume with the same flags: -> its Progress.
        A summary without one, a run that already ended (raises Done); else None."""
        out = self.out
        if self.main:
            runfiles.finish_cut_writes(out)
        self.accelerator.wait_for_everyone()
        progress = runfiles.read_progress(out)
        summary = runfiles.read_json(out / runfiles.SUMMARY)
        if not progress and summary and summary.get("status") not in RESUMABLE:
            raise Done(out, summary, self.main)
        if progress:
            self.check_resume(progress)
        return progress

    def check_resume(self, progress):
        """A resume with other flags, processes or code would blend two runs: refused in one line naming each
        difference. Code accepted with --allow_code_change is recorded: config.json's git_commits."""
        out, then, now = self.out, progress.flags, self.trained_flags()
        differ = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
        code = [k for k in differ if k in CODE]
        refused = [k for k in differ if k not in CODE or not self.args.allow_code_change]
        if refused:
            was = ", ".join(f"{k}={then.get(k)}" for k in refused)
            how = "the same flags" + (" and number of processes" if "num_processes" in refused else "")
            code_fix = ", add --allow_code_change to resume under this code" if set(refused) & set(CODE) else ""
            raise ConfigError(f"{out} holds a checkpoint of a run with {was}; resume it with {how}{code_fix}, or "
                              "choose another --output_dir to start a new run")
        commits = (runfiles.read_json(out / runfiles.CONFIG) or {}).get("git_commits") or [then.get("git_commit")]
        if code:
            commits = [*commits, now["git_commit"]] if now["git_commit"] != commits[-1] else commits
            then.update({k: now[k] for k in CODE})  # what the next checkpoint of this run records
        if len(commits) > 1:
            self.config["git_commits"] = commits

    def train(self):
        """The epoch loop, from where self.state is; -> the summary."""
        state = self.state
        summary = {"status": runfiles.FINISHED, "time/startup_s": time.perf_counter() - START}
        self.t0 = time.perf_counter() - state.interval_s  # seconds: the interval resumed, as trained
        try:
            while state.epoch < self.args.epochs:
                self.train_epoch(summary)
                state.epoch, state.step = state.epoch + 1, 0
        except (BadData, WriteError) as e:  # the run can go on from its last whole update once that is fixed
            self.failed(e, summary)
        except Stop as stop:
            self.stopped(stop, summary)
        return summary

    def train_epoch(self, summary):
        """The epoch's batches from state.step on, evaluating at its points. Raises Stop."""
        args, acc, state = self.args, self.accelerator, self.state
        self.train_dl.set_epoch(state.epoch)
        loader = acc.skip_first_batches(self.train_dl, state.step) if state.step else self.train_dl
        loader.set_epoch(state.epoch)
        bar = tqdm(checked(loader, acc, self.data.path == "stream"), total=len(loader),
                   desc=f"epoch {state.epoch + 1}/{args.epochs}", leave=False,
                   disable=not (self.main and sys.stderr.isatty()))  # agent logs get plain lines only
        for x, y in bar:
            state.step += 1
            self.train_step(x, y, state.step)
            if not acc.sync_gradients:
                continue
            state.updates += 1
            last = state.updates == self.total_updates
            if last or state.updates - state.epoch * self.updates_per_epoch in self.eval_at:
                self.evaluation_point(state.step)
            if last:
                break
            if self.stopping:  # a whole update is done: its state can be saved
                raise Stop(runfiles.PREEMPTED, state.step)
        if state.epoch == 0:  # proves the data is sharded: each rank trains on its own part
            samples = torch.tensor([state.step * args.batch_size], device=acc.device)
            state.samples_per_rank = acc.gather(samples).tolist()

    def stopped(self, stop, summary):
        """Training ended early: the summary says how and where; a preempted run saves its checkpoint."""
        state = self.state
        summary.update({"status": stop.status, "stop/epoch": state.epoch + 1, "stop/step": stop.step})
        if stop.status == runfiles.OOM:
            summary.update({"oom/batch_size": self.args.batch_size, **{f"oom/{k}": v for k, v in stop.info.items()}})
        elapsed = time.perf_counter() - self.t0  # the interval cut short
        images = int(self.accelerator.reduce(self.sums)[2].item())  # trained in it
        if stop.status == runfiles.PREEMPTED:  # the checkpoint carries the interval on to the resumed part
            error = self.save_checkpoint(elapsed)
            summary.update({"checkpoint_error": error} if error else {})
        state.examples += images  # for the summary, which counts every image trained, a preempted part's too
        state.clock["train"] += elapsed

    def failed(self, error, summary):
        """An image met mid-stream cannot be read, or a file of the run cannot be written (a full disk): status
        failed. An image: a checkpoint at the last whole update, from which the same command resumes once the
        file is fixed. A full disk has no room for one: the same command resumes from an earlier checkpoint, if
        any, or starts again."""
        state = self.state
        state.step -= state.step % self.args.grad_accum_steps
        self.optimizer.zero_grad()
        summary.update({"status": runfiles.FAILED, "error": str(error), "stop/epoch": state.epoch + 1,
                        "stop/step": state.step})
        if isinstance(error, WriteError):  # at an evaluation point, whose interval is already counted
            return
        elapsed = time.perf_counter() - self.t0
        saved = self.save_checkpoint(elapsed)
        summary.update({"checkpoint_error": saved} if saved else {})
        state.clock["train"] += elapsed

    def train_step(self, x, y, step):
        """One micro-batch: forward, the ranks' agreement on how to go on, backward, and the update when due.
        Raises Stop (oom, diverged)."""
        args, acc, model = self.args, self.accelerator, self.model
        if not self.compiled:
            self.compile_first(x, y)
        first = self.state.updates == 0 and step == 1 and not self.resumed
        with acc.accumulate(model):
            oom = None
            try:
                with self.saved.hooks() if first else contextlib.nullcontext():
                    x, target = self.mix(x, y)  # mixup/cutmix: soft targets, label smoothing folded in
                    logits = model(x)
                    smoothing = 0.0 if self.mix.on else args.label_smoothing  # mixed targets are smoothed already
                    loss = F.cross_entropy(logits, target, label_smoothing=smoothing)
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
                raise Stop(runfiles.OOM, step, **(oom or memory_now(acc.device)))
            if diverged:
                raise Stop(runfiles.DIVERGED, step)
            self.stopping = asked
            if first:
                self.state.activations_mb = self.saved.mb()
            self.backward(loss)
        self.sums += torch.stack([loss.detach().float() * len(y), (logits.argmax(1) == y).sum().float(),
                                  loss.new_tensor(float(len(y)))])

    def backward(self, loss):
        """Backward, and the update when one is due. Raises Stop (oom)."""
        args, acc, model = self.args, self.accelerator, self.model
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
            raise Stop(runfiles.OOM, self.state.step, **memory_now(acc.device)) from None
        if acc.sync_gradients:
            self.scheduler.step_update(self.state.updates + 1)

    def compile_first(self, x, y):
        """torch.compile compiles the model at its first forward and backward pass: run both once, on the first
        batch and apart from training (time/compile_s, not time/train_s), with the buffers (batch norm's
        statistics) and the random state put back and the gradients dropped, so that training is as without it.
        Every rank does it, so DDP's all-reduce in the backward pass is matched."""
        start = time.perf_counter()
        buffers = [b.clone() for b in self.model.buffers()]
        with torch.random.fork_rng(devices=[self.accelerator.device] if self.accelerator.device.type == "cuda" else []):
            F.cross_entropy(self.model(x), y).backward()
        with torch.no_grad():
            for b, saved in zip(self.model.buffers(), buffers, strict=True):
                b.copy_(saved)
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        self.state.clock["compile"] = self.state.clock.get("compile", 0.0) + elapsed  # a resumed part compiles again
        self.t0 += elapsed  # the training interval leaves it out
        self.compiled = True

    def evaluation_point(self, step):
        """Close the training interval, evaluate on validation, and record one history row."""
        args, acc, state = self.args, self.accelerator, self.state
        loss_sum, correct, n = acc.reduce(self.sums).tolist()  # synchronises the device: the clock is exact
        interval_s = time.perf_counter() - self.t0
        state.clock["train"] += interval_s
        self.sums.zero_()
        state.examples += int(n)
        row = {"epoch": state.updates / self.updates_per_epoch, "update": state.updates, "examples": state.examples,
               "train/loss": loss_sum / n, "train/acc": correct / n, "train/lr": self.lr}
        row.update(self.evaluate(self.val_dl, "val")[0])
        row.update({"time/train_s": state.clock["train"], "throughput/train_img_s": n / interval_s,
                    **self.noise.interval(), **self.memorisation(), **self.measure_sharpness()})
        best = min((h["val/loss"] for h in self.history), default=math.inf)
        self.history.append(row)
        self.record(row, row["val/loss"] < best)
        self.t0 = time.perf_counter()
        reached = args.target_val_acc and row["val/acc"] >= args.target_val_acc
        if reached and args.stop_at_target:
            raise Stop(runfiles.REACHED_TARGET, step)
        if args.early_stopping_patience and points_since_best(self.history) >= args.early_stopping_patience:
            raise Stop(runfiles.EARLY_STOPPED, step)

    def record(self, row, best):
        """The point in history.csv and W&B, then, if it is the best so far, its model, written beside and renamed
        so that a kill or a full disk never leaves half a model. A file that cannot be written (a full disk)
        raises WriteError on every rank, so that none waits for another, and the point is not kept."""
        acc, tmp = self.accelerator, self.out / (runfiles.MODEL + ".tmp")
        error, kept = "", False
        try:
            if self.main:
                with writing(self.out / runfiles.HISTORY):
                    runfiles.write_history(self.out / runfiles.HISTORY, self.history)
                kept = True
                self.run.log(row)
                tqdm.write(" ".join(f"{k}={v:.4g}" for k, v in row.items()))
            if best:
                with writing(self.out / runfiles.MODEL):
                    acc.save_model(self.model, tmp)  # every rank's call; the main one writes
        except WriteError as e:
            error = str(e)
        if acc.num_processes > 1:  # every rank has made tmp by now, and learns the main one's error
            error = broadcast_object_list([error])[0]
        if self.main:
            if best and not error:
                os.replace(tmp / runfiles.MODEL, self.out / runfiles.MODEL)
            shutil.rmtree(tmp, ignore_errors=True)
        if error:
            if self.main and not kept:
                self.history.pop()  # history.csv does not have it: neither does the summary
            raise WriteError(error)

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
        args, acc, clock = self.args, self.accelerator, self.state.clock
        point = len(self.history) + 1  # this evaluation point's number, counted from 1
        if not args.sharpness_every or (point % args.sharpness_every and self.state.updates < self.total_updates):
            return {}
        start = time.perf_counter()
        try:  # the model itself: a compiled one takes no double backward
            eig = sharpness(acc.unwrap_model(self.model, keep_torch_compile=False), *self.sharpness_batch,
                            args.sharpness_iters, args.seed, args.label_smoothing)
        except (RuntimeError, MemoryError) as e:
            if not is_oom(e):
                raise
            raise Stop(runfiles.OOM, 0, phase="sharpness", **memory_now(acc.device)) from None
        clock["sharpness"] = clock.get("sharpness", 0.0) + time.perf_counter() - start  # a checkpoint may predate it
        return {"sharpness/top_eig": eig}

    def evaluate(self, loader, prefix):
        """evaluate(), after precise BN when asked; both timed apart from training. Raises Stop (oom)."""
        clock, start = self.state.clock, time.perf_counter()
        try:
            if self.args.precise_bn and self.bn_fresh_at != self.state.updates:
                recompute_batch_norm(self.accelerator, self.model, self.bn_dl)
                self.bn_fresh_at = self.state.updates
                clock["precise_bn"] += time.perf_counter() - start
                start = time.perf_counter()
            average_batch_norm(self.accelerator, self.model)
            result = evaluate(self.accelerator, self.model, loader, prefix)
        except (RuntimeError, MemoryError) as e:
            if not is_oom(e):
                raise
            raise Stop(runfiles.OOM, 0, phase=prefix, **memory_now(self.accelerator.device)) from None
        clock["eval"] += time.perf_counter() - start
        return result

    def save_checkpoint(self, interval_s):
        """Model, optimizer, scheduler and RNG states (accelerator.save_state) plus progress.json (self.state),
        written beside the old checkpoint and swapped in; progress.json is written last, so its presence means
        whole. -> "" when saved, else why not (a full disk: the run then cannot resume, but nothing crashes)."""
        acc, out, state = self.accelerator, self.out, self.state
        state.sums, state.interval_s = acc.reduce(self.sums).tolist(), interval_s
        tmp = runfiles.checkpoint_tmp(out)
        error = ""
        try:
            if self.main:
                runfiles.remove_checkpoint(tmp)
            acc.wait_for_everyone()
            acc.save_state(tmp)
            acc.wait_for_everyone()
            if self.main:
                runfiles.write_progress(tmp, state)
                runfiles.swap_in_checkpoint(out)
        except Exception as e:  # a full disk (torch.save says so as a RuntimeError): no half checkpoint is left
            error = f"checkpoint not saved ({type(e).__name__}: {str(e).splitlines()[0][:160]}); the run cannot resume"
            if self.main:
                runfiles.remove_checkpoint(tmp)
                print(error, file=sys.stderr, flush=True)
        acc.wait_for_everyone()
        return error

    def finish(self, summary):
        """Test metrics, memory and the summary, in W&B and summary.json; the checkpoint goes once the run has
        ended for good. -> the summary."""
        args, acc, status = self.args, self.accelerator, summary["status"]
        if status == runfiles.OOM:  # give the memory back before the final reports
            self.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if acc.device.type == "cuda":
                torch.cuda.empty_cache()
        if args.early_stopping_patience and status in runfiles.COMPLETED and self.history:
            load_best_model(acc, self.model, self.out)
            self.bn_fresh_at = self.state.updates  # the saved weights carry their own point's batch-norm statistics
        summary.update(self.final_metrics(status))
        if status in runfiles.COMPLETED:
            summary.update(self.test())
        peak = peak_memory(acc)  # the largest over the ranks
        summary.update(zip(peak, acc.reduce(torch.tensor(list(peak.values()), device=acc.device), "max").tolist(),
                           strict=True))
        if self.main:
            finish_run(args, self.run, self.out, summary, self.preemption.signal)
            if summary["status"] not in RESUMABLE:
                runfiles.remove_checkpoint(self.out / runfiles.CHECKPOINT)  # ended for good: nothing to resume
            if self.has_bn and not args.precise_bn and self.state.updates < BN_SETTLED and status in runfiles.COMPLETED:
                print(f"note: evaluation used batch-norm running statistics from only {self.state.updates} updates; "
                      "--precise_bn recomputes them on the training data", flush=True)
        acc.end_training()
        return summary

    def test(self):
        """The test metrics, and the confusion matrix in W&B; out of memory: status oom, with the figures."""
        try:
            test, pred, y = self.evaluate(self.test_dl, "test")
        except Stop as stop:
            return {"status": stop.status, "oom/phase": "test", "oom/batch_size": self.args.batch_size,
                    **{f"oom/{k}": v for k, v in stop.info.items() if k != "phase"}}
        if self.main:
            self.run.log({"test/confusion_matrix": wandb.plot.confusion_matrix(
                y_true=y.tolist(), preds=pred.tolist(), class_names=self.classes)})
        return test

    def final_metrics(self, status):
        nan, h, state = float("nan"), self.history, self.state
        last = h[-1] if h else {}
        train_s = state.clock["train"]
        out = {"epoch": state.updates / self.updates_per_epoch, "update": state.updates, "examples": state.examples,
               "train/loss": last.get("train/loss", nan), "train/acc": last.get("train/acc", nan),
               "val/acc": max((r["val/acc"] for r in h), default=nan),
               "val/loss": min((r["val/loss"] for r in h), default=nan),
               "val/acc_final": last.get("val/acc", nan), "val/loss_final": last.get("val/loss", nan),
               "test/loss": nan, "test/acc": nan,
               "time/train_s": train_s, "time/eval_s": state.clock["eval"],
               "time/precise_bn_s": state.clock["precise_bn"], "time/compile_s": state.clock.get("compile", 0.0),
               "time/sharpness_s": state.clock.get("sharpness", 0.0),
               "throughput/train_img_s": state.examples / train_s if train_s else nan,
               "memory/activations_mb": state.activations_mb,
               **({"data/samples_per_rank": state.samples_per_rank} if state.samples_per_rank else {})}
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
    """The output folder holds a run that already ended: the same command again completes W&B's record of it if
    that was cut short (complete_wandb), and else has nothing to do."""

    def __init__(self, out, summary, main):
        super().__init__(f"{out} already holds a run that ended ({summary.get('status')}): nothing to do; delete the "
                         "folder or choose another --output_dir to run again")
        self.out, self.summary, self.main = out, summary, main


class WriteError(ConfigError):
    """A file of the run cannot be written (a full disk, a disk gone read-only): free the disk, then run the same
    command. Before training, a one-line error; during it, status failed."""


@contextlib.contextmanager
def writing(path):
    """Turn an error writing the run's file or folder `path` into WriteError, naming it."""
    try:
        yield
    except (OSError, SafetensorError) as e:
        raise WriteError(f"cannot write {path}: {e.strerror if isinstance(e, OSError) else e}") from None


def create_optimizer(args, model):
    try:
        return timm.optim.create_optimizer_v2(model, opt=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                                              **({} if args.momentum is None else {"momentum": args.momentum}))
    except (AssertionError, ImportError, ValueError) as e:  # CUDA-only or uninstalled optimizers
        raise ConfigError(f"--optimizer {args.optimizer} cannot run here ({e}); try adamw or sgd") from None


def points_since_best(history):
    losses = [h["val/loss"] if math.isfinite(h["val/loss"]) else math.inf for h in history]
    return len(history) - 1 - losses.index(min(losses))


def load_best_model(accelerator, model, out):
    """The lowest-val/loss point's weights, which accelerator.save_model wrote to out/model.safetensors."""
    from safetensors.torch import load_file
    accelerator.wait_for_everyone()
    accelerator.unwrap_model(model).load_state_dict(load_file(out / runfiles.MODEL, device="cpu"))


# ----------------------------------------------------------------------------------------------
# Run bookkeeping: W&B on the main process, and the same numbers in --output_dir

def wandb_mode(args):
    if args.wandb_mode or os.environ.get("WANDB_MODE"):
        return args.wandb_mode or os.environ["WANDB_MODE"], False
    return ("online", False) if wandb.login(prompt=False, verify=False) else ("offline", True)


# How W&B fails when wandb-core is gone (a job's signal, the OOM killer) or cannot write (a full disk): the
# connection reset or closed, W&B's own errors (ServicePollForTokenError while it starts one), and its pending
# requests abandoned (HandleAbandonedError, a plain Exception, from run.finish).
WANDB_FAILED = (OSError, EOFError, wandb.Error, HandleAbandonedError)


class WandbRun:
    """The W&B run of the main process, each call guarded. When W&B fails (wandb-core gone: a job's SIGTERM or
    kill reaches it too; or W&B cannot write its files: a full disk), the run goes on and its own files stay
    whole: one line says so, W&B's run ends as failed, and the same command completes W&B's record."""

    def __init__(self, run):
        self.run, self.id, self.settings = run, run.id, run.settings
        self.error = ""  # the first failure

    def call(self, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except WANDB_FAILED as e:
            if not self.error:
                self.error = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__
                print(f"wandb: W&B failed ({self.error}); the run goes on and its files stay whole", flush=True)
            return None

    def log(self, row):
        self.call(self.run.log, row)

    def update_summary(self, values):
        self.call(self.run.summary.update, values)

    def log_artifact(self, artifact, aliases):
        self.call(self.run.log_artifact, artifact, aliases=aliases)

    def mark_preempting(self):
        self.call(self.run.mark_preempting)

    def finish(self, exit_code):
        """End W&B's run; a run whose W&B record is incomplete ends as failed (exit code 1) there."""
        self.call(self.run.finish, exit_code=1 if self.error and not exit_code else exit_code)
        if self.error:
            with contextlib.suppress(Exception):  # else its exit hook prints a traceback of the same failure
                wandb.teardown()


def start_wandb(args, config, resume_id=None):
    mode, defaulted = wandb_mode(args)
    if mode == "disabled":
        os.environ["WANDB_MODE"] = "disabled"  # wandb.init then returns a no-op run
    # the id W&B would take, known here so that a failed attempt's folder can be found
    run_id = resume_id or os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)  # not seeded, as W&B's
    init = dict(project=args.wandb_project, entity=args.wandb_entity or None, group=args.wandb_group or None,
                tags=args.wandb_tags.split(",") if args.wandb_tags else None, name=args.run_name or None,
                config=config, id=run_id, resume="allow" if resume_id else None)
    if mode == "online" and "WANDB_INIT_TIMEOUT" not in os.environ:
        init["settings"] = wandb.Settings(init_timeout=30)  # seconds; W&B's 90 s is long to learn "no network"
    try:
        run = init_wandb(mode, init)
    except (wandb.errors.CommError, wandb.errors.AuthenticationError, TimeoutError) as e:
        if mode != "online":
            raise
        # No network, or a key W&B refuses: the run is still recorded, offline, and can be uploaded later. W&B's
        # failed attempt ends now (its last line is printed here, not after the result), and its folder goes:
        # `wandb sync` would upload it as a second, empty run.
        wandb.teardown()
        attempts = list(Path(wandb.Settings().wandb_dir).glob(f"run-*-{init['id']}"))
        for attempt in attempts:
            shutil.rmtree(attempt, ignore_errors=True)
        print(f"wandb: cannot reach W&B ({str(e).splitlines()[0][:120]}); logging offline instead"
              + "".join(f" (the attempt's {a} is removed)" for a in attempts), flush=True)
        run, defaulted = wandb.init(mode="offline", **{k: v for k, v in init.items() if k != "settings"}), True
    guarded = WandbRun(run)
    guarded.call(run.define_metric, "epoch")
    for key in runfiles.POINT_METRICS:  # plotted against epoch; the summary of val/acc and val/loss is the best
        if key != "epoch":
            guarded.call(run.define_metric, key, step_metric="epoch", summary=BEST.get(key))
    if defaulted:
        print(f"wandb: offline: run saved in {run.settings.sync_dir}; "
              f"upload it with `wandb sync {run.settings.sync_dir}`", flush=True)
    return guarded


def init_wandb(mode, init):
    """wandb.init, and once more when W&B's service died while it started (a job's signal or the OOM killer
    reached wandb-core): W&B's start never costs the run. The failed attempt's folder goes; it holds nothing."""
    folders = Path(wandb.Settings().wandb_dir)
    before = set(folders.glob(f"*run-*-{init['id']}"))  # a resumed run's earlier starts
    try:
        return wandb.init(mode=mode, **init)
    except (wandb.errors.CommError, wandb.errors.AuthenticationError, TimeoutError):
        raise  # W&B unreachable, or refusing the key: start_wandb logs offline instead
    except WANDB_FAILED as e:
        print(f"wandb: W&B's service failed while starting ({type(e).__name__}); starting it again", flush=True)
        with contextlib.suppress(Exception):
            wandb.teardown()
        for attempt in set(folders.glob(f"*run-*-{init['id']}")) - before:
            shutil.rmtree(attempt, ignore_errors=True)
        return wandb.init(mode=mode, **init)


# ----------------------------------------------------------------------------------------------
# W&B's record against the run's files: what W&B lost (a job killed before wandb-core wrote its log, wandb-core
# gone, a full disk under W&B) is logged again by the next start of the same W&B run

def wandb_folders(run_dir):
    """The local W&B folders of the run whose folder is run_dir (one per start of it: resumed, completed), oldest
    first; those W&B left without a log (killed inside wandb.init) hold nothing and are left out."""
    run_dir = Path(run_dir)
    run_id = run_dir.name.rsplit("-", 1)[-1]
    return sorted((p for p in run_dir.parent.glob(f"*run-*-{run_id}") if any(p.glob("*.wandb"))),
                  key=lambda p: p.name.split("run-", 1)[1])  # by start time, offline and online alike


def wandb_held(folders):
    """What W&B holds in these folders, read with W&B's own reader (`wandb leet inspect`, one process a folder):
    -> {"history": {update: row}, a later folder's row replacing an earlier one's (a point redone after a
    resume), "summary" and "exit_code" of the last folder (None: it never ended)}. A log cut short reads up to
    its cut."""
    readers = [subprocess.Popen([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(folder)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for folder in folders]
    held = {"history": {}, "summary": {}, "exit_code": None}
    for reader in readers:
        held["summary"], held["exit_code"] = {}, None
        for line in reader.communicate()[0].splitlines():
            record = json.loads(line)
            if record["type"] == "history" and "update" in record["history"]["item"]:
                held["history"][record["history"]["item"]["update"]] = record["history"]["item"]
            elif record["type"] == "summary":
                held["summary"].update(record["summary"].get("update", {}))
            elif record["type"] == "exit":
                held["exit_code"] = record["exit"].get("exit_code", 0)
    return held


def same_value(recorded, value):
    """W&B keeps NaN as null."""
    return recorded == value or (recorded is None and isinstance(value, float) and math.isnan(value))


def lost_points(held, history):
    """The rows of history that W&B lacks, or holds with other values (logged by a part whose point was redone)."""
    return [row for row in history if not all(same_value(held["history"].get(row["update"], {}).get(k), v)
                                              for k, v in row.items())]


def relog_lost_points(run, history):
    """Log again the points of history that the earlier starts of this W&B run lack (a job killed before
    wandb-core wrote them) or hold with other values (a point redone after a kill). -> how many."""
    if run.settings.mode == "disabled":
        return 0
    earlier = [f for f in wandb_folders(run.settings.sync_dir) if f != Path(run.settings.sync_dir)]
    if not earlier:  # W&B's record is not here to compare (another machine, or synced and cleaned)
        return 0
    lost = lost_points(wandb_held(earlier), history)
    for row in lost:
        run.log(row)
    return len(lost)


def wandb_lacks(out, summary):
    """What W&B's record of a run that ended lacks of its files: -> (its folders, the history rows it lacks,
    whether its summary or end differ), or None when it holds them all or its record is not here to compare."""
    folders = wandb_folders(summary["wandb_run_dir"]) if summary.get("wandb_run_dir") else []
    if not folders:
        return None
    held = wandb_held(folders)
    lost = lost_points(held, runfiles.read_history(out / runfiles.HISTORY))
    ended = held["exit_code"] == exit_code(summary["status"]) and all(
        same_value(held["summary"].get(k), v) for k, v in wandb_summary(summary).items())
    return None if not lost and ended else (folders, lost)


def complete_wandb(args, out, summary):
    """Make W&B's record of a run that ended equal its files (killed in its last seconds, W&B's service gone, a
    full disk under W&B): a new start of the same W&B run logs the points W&B lacks, sets the summary, and ends
    the run as train.py did. -> what was done, or "" when W&B already held it all or its record is not here."""
    lacking = wandb_lacks(out, summary)
    if lacking is None:
        return ""
    folders, lost = lacking
    run = start_wandb(args, runfiles.read_json(out / runfiles.CONFIG), resume_id=folders[-1].name.rsplit("-", 1)[1])
    for row in lost:
        run.log(row)
    summary["wandb_run_dir"] = run.settings.sync_dir
    runfiles.write_json(out / runfiles.SUMMARY, summary)  # names the W&B folder that holds the run's end
    run.update_summary(wandb_summary(summary))
    run.finish(exit_code(summary["status"]))
    if run.error or wandb_lacks(out, summary):  # W&B could not write it: a full disk under W&B
        return f"W&B could not write its record of {out} yet; run the same command to complete it"
    return f"completed W&B's record of {out}: {len(lost)} points logged again, its summary and its end"


def run_folder(run):
    """The output folder's name: W&B's own run folder name (run-<time>-<id>), or a new one like it."""
    name = Path(run.settings.sync_dir or "").name if run.settings.mode != "disabled" else ""
    return name.removeprefix("offline-") if name.startswith(("run-", "offline-run-")) else \
        f"run-{time.strftime('%Y%m%d_%H%M%S')}-{run.id}"


def peak_memory(accelerator):
    """MB. CUDA: the peak torch allocation since the start. CPU: the process's peak resident memory less the pages
    mapped from files (the libraries' code): the memory it allocated, however it started. A fork of a process
    that imported the libraries (sweep.py's warm starts) maps their code only as it runs it, so its peak RSS alone
    is 300 MB below a standalone run's; what it allocated is the same. Files mapped after the peak are few."""
    if accelerator.device.type == "cuda":
        return {"memory/peak_mb": torch.cuda.max_memory_allocated() / 2**20,
                "memory/peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20}
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    kib = {key: int(status[key].split()[0]) for key in ("VmHWM", "RssFile")}  # Linux, in KiB
    return {"memory/peak_mb": (kib["VmHWM"] - kib["RssFile"]) / 1024}


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
    """The commit of this train.py's checkout, and whether it had changes; "" for both when unknown: outside a
    git checkout (a source archive), or in a folder of some other repository."""
    here = Path(__file__).resolve().parent
    unknown = {"git_commit": "", "git_dirty": ""}

    def git(*argv):
        return subprocess.run(["git", *argv], cwd=here, capture_output=True, text=True, timeout=30)
    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != here:
            return unknown
        commit = git("rev-parse", "HEAD")  # fails in a repository without commits
        if commit.returncode != 0:
            return unknown
        changed = git("status", "--porcelain", "--untracked-files=no").stdout.strip()  # not run folders made here
        return {"git_commit": commit.stdout.strip(), "git_dirty": bool(changed)}
    except (OSError, subprocess.SubprocessError):
        return unknown


def without_amx():
    """For a run on the CPU: oneDNN's kernels without AMX, unless the user set oneDNN's ceiling
    (ONEDNN_MAX_CPU_ISA, or DNNL_MAX_CPU_ISA). On AMX, a bf16 run that otherwise finishes to the same bit ended
    now and then with a NaN loss (status diverged), the more often the busier its core; without AMX, never
    (bench/amx.py, in bench/RESULTS.md). fp32 uses no AMX: its kernels and results stay the same.
    -> the ceiling in effect."""
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "AVX512_CORE_FP16"))
    return os.environ["ONEDNN_MAX_CPU_ISA"]  # read by oneDNN once, when first used


def device_name(accelerator):
    if accelerator.device.type == "cuda":
        return torch.cuda.get_device_name(accelerator.device)
    return f"cpu ({os.cpu_count()} cores)"


def wandb_summary(summary):
    """summary.json as W&B's run summary, every key set from the whole run: a resumed run's W&B run saw only its
    own points. val/acc and val/loss in the form define_metric gives them, {"max": ...} and {"min": ...}."""
    return {k: {BEST[k]: v} if k in BEST else v for k, v in summary.items() if k != "wandb_run_dir"}


def finish_run(args, run, out, summary, signum):
    """summary.json first, so that a W&B that fails or is killed never costs the run's record; then W&B's."""
    summary["wandb_run_dir"] = run.settings.sync_dir if run.settings.mode != "disabled" else None
    try:
        with writing(out / runfiles.SUMMARY):
            runfiles.write_json(out / runfiles.SUMMARY, summary)
    except WriteError as e:  # a full disk: the run's end is then W&B's only, and the same command runs it again
        summary.update({"status": runfiles.FAILED, "error": summary.get("error") or str(e)})
    run.update_summary(wandb_summary(summary))
    ended = summary["status"] not in RESUMABLE  # a run that resumes uploads its model at its end
    if args.log_model and ended and (out / runfiles.MODEL).exists():
        artifact = wandb.Artifact(f"model-{run.id}", type="model",
                                  metadata={k: summary[k] for k in ("status", "epoch", "val/loss", "test/acc")})
        artifact.add_file(str(out / runfiles.MODEL))
        run.log_artifact(artifact, aliases=["best"])
    if summary["status"] == runfiles.PREEMPTED:
        run.mark_preempting()  # W&B's agent requeues the run; the same command resumes it from out/checkpoint
        print(f"preempted: checkpoint in {out / runfiles.CHECKPOINT}; {how_to_resume(args, out)}", flush=True)
    run.finish(exit_code(summary["status"], signum))
    if run.error:
        print(f"wandb: {after_wandb_failed(args, out, summary, run.error)}", flush=True)
    if ended:  # a failed run's line is main()'s
        print(f"{summary['status']}: test/acc={summary['test/acc']:.4f} test/loss={summary['test/loss']:.4f} "
              f"time/train_s={summary['time/train_s']:.1f} memory/peak_mb={summary['memory/peak_mb']:.0f} -> {out}",
              flush=True)


def exit_code(status, signum=None):
    """train.py's exit code for a run that stopped with this status: 0 for a result; 128 + the signal for a
    preempted run, so that `wandb agent` requeues it; 2 for a failed one (fix the file, or free the disk, and
    run the same command)."""
    return 128 + signum if status == runfiles.PREEMPTED else 2 if status == runfiles.FAILED else 0


def after_wandb_failed(args, out, summary, error):
    """W&B failed during the run: -> what now completes its record, a new start of the W&B run of a run that
    ended (if W&B works again), or the resume of a stopped one."""
    if summary["status"] not in RESUMABLE:
        try:
            return complete_wandb(args, out, summary) or "W&B's record of this run is whole"
        except WANDB_FAILED as e:
            error = f"{error}; then {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return f"W&B's record of this run is incomplete ({error}); run the same command to complete it"


def complete_ended(args, done):
    """-> what the same command did for a run that had ended: completed W&B's record, or nothing."""
    try:
        return (complete_wandb(args, done.out, done.summary) if done.main else "") or str(done)
    except WANDB_FAILED as e:
        return f"{done.out} holds a run that ended, but W&B's record of it could not be completed now " \
               f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); run the same command again later"


def chosen_by_config(args, argv):
    """For the message of a folder that holds a run that ended: ' (...)' when the --config file, not the command
    line, named that folder (a run's config.json does), with the flag that runs elsewhere; else ''."""
    given = {a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv)}
    key = "output_dir" if args.output_dir else "run_name" if args.run_name else None
    if not (args.config and key) or {"--output_dir", "--run_name"} & given:
        return ""
    return (f" (--config {args.config} sets {key} {getattr(args, key)}: add --output_dir NEW_DIR to rerun it "
            "elsewhere)")


def how_to_resume(args, out):
    """What resumes a preempted run: the same command finds its folder again only if the folder was known before
    the run started (chosen_output_dir)."""
    if args.output_dir or args.run_name:
        return "run the same command to resume"
    if os.environ.get("WANDB_RUN_ID"):
        return f"run the same command, with WANDB_RUN_ID={os.environ['WANDB_RUN_ID']} (as wandb agent does), to resume"
    return f"run the same command with --output_dir {out} to resume"


def main(argv=None):
    logging.raiseExceptions = False  # W&B's debug log on a full disk: not a traceback for every line it drops
    try:
        args = parse_args(argv)
        preemption = Preemption()  # from here a signal stops training cleanly, even one sent during setup
        training = Training(args, preemption)
    except ConfigError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Done as e:  # W&B's record of it completed, if a kill or a failure had cut it short
        print(f"train.py: {complete_ended(args, e)}{chosen_by_config(args, argv)}", file=sys.stderr)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the records are final: as below
        return None
    summary = training.finish(training.train())
    # The run's records are final. A SIGTERM from here on, say in the interpreter's teardown after Python has
    # put back the default handlers, would only turn a finished run's exit code into -15.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if summary["status"] == runfiles.FAILED:
        then = (f"resume (checkpoint in {training.out / runfiles.CHECKPOINT})"
                if runfiles.has_checkpoint(training.out) else "start it again (no checkpoint)")
        print(f"train.py: error: {summary['error']}; then run the same command to {then}", file=sys.stderr)
        sys.exit(2)
    if summary["status"] == runfiles.PREEMPTED:  # non-zero, as W&B's agent expects of a run it should requeue
        sys.exit(128 + training.preemption.signal)
    return summary


def exit_now(code):
    """End the process: flush its output, then os._exit, skipping the interpreter's and C++'s teardown. The run's
    records are final by then, and in that teardown a SIGTERM (Python has put the default handler back) or a
    library's thread destroyed while running (W&B's service gone: "terminate called without an active
    exception") would turn a run's exit code into -15 or -6 (found by bench/soak.py)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as e:  # sys.exit(2) and argparse's exits; their message is printed already
        exit_now(e.code if isinstance(e.code, int) else 0 if e.code is None else 1)
    exit_now(0)
