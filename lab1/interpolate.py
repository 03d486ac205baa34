"""Loss and accuracy along the straight line between two trained models (Goodfellow et al. 2015; Keskar et al. 2017).

    python lab1/interpolate.py RUN_A RUN_B --points 21 --out line.csv
    python lab1/interpolate.py A1 B1 A2 B2 --alpha_min -0.5 --alpha_max 1.5 --out lines.csv   # pairs, one file
    python lab1/interpolate.py RUN_A RUN_B --sharpness_samples 128                            # and sharpness

Each RUN is a train.py output folder: config.json says how to rebuild its data and model, and model.safetensors
(the weights of its lowest-val/loss evaluation point) is the end point. At each alpha the weights are
(1 - alpha) A + alpha B. An interpolated model has no valid batch-norm statistics (the running averages of
neither run describe it), so at every alpha, 0 and 1 included, they are recomputed on the training split as
train.py --precise_bn does (with run A's batch and ghost settings), and the model is evaluated on the train
(its training labels), val and test splits. So alpha 0 and 1 reproduce each run's own evaluation at that point
when it ran on one process with --precise_bn. The two runs must share the data (dataset, split seed, label
noise, ...) and the model. One CSV row per pair and alpha: run_a, run_b (folder names), alpha, train/loss,
train/acc, val/loss, val/acc, test/loss, test/acc, and with --sharpness_samples N, sharpness/top_eig as
train.py measures it (train mode, the same N images).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train.py and the modules beside it

import timm.data
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

import data
import instruments
import runfiles
import train
from data import ConfigError

# config.json keys that fix the data and the model: the two ends of a line must agree on all of them
SAME = ("dataset", "data_dir", "img_size", "train_samples", "val_fraction", "test_fraction", "seed", "label_noise",
        "model", "model_kwargs", "ghost_batch_size")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(f"{message} (see python lab1/interpolate.py --help)")


def parse_args(argv=None):
    p = Parser(description="Loss and accuracy along the line between two train.py runs' models.")
    p.add_argument("runs", nargs="+", type=Path, help="run folders, in pairs: RUN_A RUN_B [RUN_A RUN_B ...]")
    p.add_argument("--points", type=train.whole(2), default=21, help="alphas, evenly spaced, ends included")
    p.add_argument("--alpha_min", type=float, default=0.0, help="0 is RUN_A")
    p.add_argument("--alpha_max", type=float, default=1.0, help="1 is RUN_B")
    p.add_argument("--sharpness_samples", type=train.whole(0), default=0,
                   help="also measure sharpness/top_eig on this many training images at each alpha; 0 = off")
    p.add_argument("--sharpness_iters", type=train.whole(1), default=20, help="most Hessian-vector products")
    p.add_argument("--out", type=Path, default=Path("interpolation.csv"), help="the CSV to write")
    args = p.parse_args(argv)
    if len(args.runs) % 2:
        raise ConfigError(f"give run folders in pairs (RUN_A RUN_B ...); got {len(args.runs)}")
    return args


def run_args(folder):
    """The train.py flags a run folder's config.json records."""
    config = runfiles.read_json(folder / runfiles.CONFIG)
    if not isinstance(config, dict) or not (folder / "model.safetensors").is_file():
        raise ConfigError(f"{folder} is not a train.py run folder with config.json and model.safetensors")
    args = train.parse_args([])
    for key, value in config.items():
        if hasattr(args, key):
            setattr(args, key, value)
    args.pretrained = False  # the weights come from model.safetensors
    return args


def pair_args(folders):
    """The flags of both runs of a pair, which must share the data and the model."""
    a, b = (run_args(folder) for folder in folders)
    differ = [f"{k} ({getattr(a, k)} vs {getattr(b, k)})" for k in SAME if getattr(a, k) != getattr(b, k)]
    if differ:
        raise ConfigError(f"{folders[0]} and {folders[1]} differ in {', '.join(differ)}: a line needs the same "
                          "data and model at both ends")
    return a, b


def line(accelerator, a, folders, opts):
    """-> one row per alpha for a pair of run folders (a: the first one's flags)."""
    loaded = data.load_data(a)
    model = train.create_model(a, len(loaded.classes), in_chans=loaded.in_chans).to(accelerator.device)
    _, val, test, bn_loader = loaded.loaders(a, timm.data.resolve_model_data_config(model), accelerator.device, 1)
    loaders = {"train": data.in_order(bn_loader.dataset, like=val), "val": val, "test": test}
    ends = [load_file(folder / "model.safetensors", device=str(accelerator.device)) for folder in folders]
    probe = opts.sharpness_samples and instruments.sharpness_images(bn_loader.dataset, opts.sharpness_samples, a.seed,
                                                                    accelerator.device)
    rows = []
    alphas = torch.linspace(opts.alpha_min, opts.alpha_max, opts.points, dtype=torch.float64).tolist()
    for alpha in (round(x, 10) for x in alphas):  # 0 and 1 exactly, not 2.8e-17 from the spacing
        # lerp is exact at 0 and 1; integer buffers (batches tracked) are recomputed with the statistics
        model.load_state_dict({k: torch.lerp(v, ends[1][k], alpha) if v.is_floating_point() else v
                               for k, v in ends[0].items()})
        train.recompute_batch_norm(accelerator, model, bn_loader)
        row = {"run_a": folders[0].name, "run_b": folders[1].name, "alpha": alpha}
        for name, loader in loaders.items():
            row.update(train.evaluate(accelerator, model, loader, name)[0])
        if probe:
            row["sharpness/top_eig"] = instruments.sharpness(model, *probe, opts.sharpness_iters, a.seed,
                                                             a.label_smoothing)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    try:
        opts = parse_args(argv)
        pairs = [opts.runs[i:i + 2] for i in range(0, len(opts.runs), 2)]
        flags = [pair_args(pair) for pair in pairs]  # every folder checked before any work
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
        rows = [row for pair, (a, _) in zip(pairs, flags, strict=True) for row in line(accelerator, a, pair, opts)]
    except ConfigError as e:
        print(f"interpolate.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    runfiles.write_history(opts.out, rows)  # a CSV, replaced atomically
    print(f"{len(rows)} rows -> {opts.out}")


if __name__ == "__main__":
    main()
