"""train.py's data: every dataset is one entry of DATASETS, served one of two ways.

In memory, for data that fits: decoded once into uint8 tensors (on the GPU when there is one); a whole batch is
indexed, resized, augmented and normalised in one call on the device. An image folder is decoded with every
core into a cache that later runs, agents and ranks map instead of decoding again.
Streaming, for data of any size: timm's transforms in DataLoader worker processes, each rank reading its own
part through Accelerate's prepare; the images are read as they are needed.

    data = load_data(args)               # lists the dataset, picks the path, splits (and decodes, in memory)
    train, val, test, bn = data.loaders(args, data_config, device, num_processes)   # for accelerator.prepare
"""

import ctypes
import fcntl
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SYNTHETIC_SIZE = 5000  # images in --dataset synthetic: random uint8 RGB at img_size, 10 classes
SPLIT_NAMES = {"train": ("train", "training"),  # the folder names users give their splits, compared lower-case
               "val": ("val", "valid", "validation"), "test": ("test", "testing")}
# torchvision's ImageFolder extensions, and GIF (its first frame), which PIL reads as well
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
CACHE_VERSION = 1  # part of every cache key: bump it when read_image's output changes
BUDGET_SHARE = 4  # auto keeps data in memory when its decoded size is at most 1/4 of the free memory


class ConfigError(Exception):
    """A user mistake: train.py's main() prints it as one line and exits with code 2."""


class BadData(ConfigError):
    """An image that cannot be read. Raised in a DataLoader worker, torch raises it again in the main process
    as BadData(<the worker's traceback>): the message is then the traceback's last line, as raised."""

    def __init__(self, message):
        raised = re.findall(r"BadData: (.*)", str(message))
        super().__init__(raised[-1] if raised else message)


# ----------------------------------------------------------------------------------------------
# Reading: each dataset's splits as uint8 arrays (N, C, H, W) or as image files, with integer labels

def list_digits(args):
    """1,797 real 8x8 scans, values 0..16: the file sklearn's load_digits reads."""
    # finding the package does not import it (1 s of start-up)
    path = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0]) / "datasets/data/digits.csv.gz"
    data = np.loadtxt(path, delimiter=",")
    x = np.round(data[:, :-1].reshape(-1, 1, 8, 8) * (255 / 16)).astype(np.uint8)
    return {"train": (x, data[:, -1].astype(int))}, [str(c) for c in range(10)]


def list_synthetic(args):
    """For benchmarks: the shape of real data with none of its cost."""
    rng = np.random.default_rng(args.seed)
    x = rng.integers(0, 256, (SYNTHETIC_SIZE, 3, args.img_size, args.img_size), dtype=np.uint8)
    return {"train": (x, np.arange(SYNTHETIC_SIZE) % 10)}, [str(c) for c in range(10)]


def list_torchvision(name, args):
    import torchvision.datasets as tvd
    created = not Path(args.data_dir).exists()
    try:
        train, test = (getattr(tvd, name)(args.data_dir, train=t, download=args.download) for t in (True, False))
    except (RuntimeError, OSError) as e:  # not there; or --download without network (URLError is an OSError)
        if created:  # leave no empty folders behind a failed download
            shutil.rmtree(args.data_dir, ignore_errors=True)
        how = "check the network" if args.download else "add --download on a machine with network"
        raise ConfigError(f"{args.dataset} not found in --data_dir {args.data_dir} ({str(e).splitlines()[0]}); "
                          f"{how}, or point --data_dir at it") from None
    return {"train": channels_first(train), "test": channels_first(test)}, list(train.classes)


def channels_first(ds):
    x = np.asarray(ds.data, dtype=np.uint8)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return x, np.asarray(ds.targets)


def visible_dirs(folder):
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def list_imagefolder(args):
    """Class subfolders, flat (root/<class>/) or split: train/ (or training/), with val/, valid/ or validation/
    and test/ or testing/ beside it, each optional, in any case (Train/). Labels come from train's class names,
    so a class means the same label in every split; a class that val or test lack is fine, one that train lacks
    is an error. Hidden entries are skipped. -> ({split: (file paths, labels)}, class names)."""
    root = Path(args.data_dir)
    if not root.is_dir():
        raise ConfigError(f"--data_dir {root} is not a folder; give a folder of class subfolders")
    folders = split_folders(root)
    if not folders:
        files, labels, classes = list_split(root, None)
        return {"train": (files, labels)}, classes
    files, labels, classes = list_split(root / folders["train"], None)
    parts = {"train": (files, labels)}
    for split in ("val", "test"):
        if split in folders:
            files, labels, _ = list_split(root / folders[split], classes)
            parts[split] = (files, labels)
    return parts, classes


def split_folders(root):
    """{"train": "Train", ...}: the split folders of root, or {} when its folders are all classes. Split folders
    are never read as classes: a layout they make ambiguous is refused, naming them."""
    names = visible_dirs(root)
    found = {split: [n for n in names if n.lower() in spellings] for split, spellings in SPLIT_NAMES.items()}
    named = [n for ns in found.values() for n in ns]
    if not named:
        return {}
    for split, ns in found.items():
        if len(ns) > 1:
            raise ConfigError(f"--data_dir {root} has both {' and '.join(n + '/' for n in ns)}: two {split} "
                              "splits; keep one of them")
    if not found["train"]:
        raise ConfigError(f"--data_dir {root} has split folder(s) {', '.join(n + '/' for n in named)} but no "
                          "train/ (or training/); rename the training split's folder to train/")
    others = sorted(set(names) - set(named))
    if others:
        raise ConfigError(f"--data_dir {root} mixes split folders ({', '.join(n + '/' for n in named)}) with "
                          f"other folders ({', '.join(n + '/' for n in others)}); move the classes into the splits")
    return {split: ns[0] for split, ns in found.items() if ns}


def list_split(folder, classes):
    """-> (image paths, labels, class names) of one split. classes: train's, or None for train."""
    from torchvision.datasets.folder import make_dataset
    names = visible_dirs(folder)
    if not names:
        raise ConfigError(f"--data_dir {folder} has no class subfolders; put each class's images in a subfolder")
    if classes is None:
        classes = names
        if len(classes) < 2:  # a one-class model scores 1.0 on anything: a result that means nothing
            raise ConfigError(f"--data_dir {folder} has one class folder ({classes[0]}); a classifier needs two or "
                              "more: add a folder of images for each other class")
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise ConfigError(f"{folder} has class folder(s) {', '.join(unknown)} that train/ lacks; "
                          "add them to train/ or remove them")

    def visible_image(path):
        parts = Path(path).relative_to(folder).parts
        return path.lower().endswith(IMAGE_EXTENSIONS) and not any(p.startswith(".") for p in parts)

    index = {c: i for i, c in enumerate(classes)}
    samples = make_dataset(folder, {c: index[c] for c in names}, is_valid_file=visible_image, allow_empty=True)
    empty = sorted(set(names) - {classes[label] for _, label in samples})
    if empty:
        raise ConfigError(f"class folder(s) {', '.join(empty)} in {folder} hold no images "
                          f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
    return [path for path, _ in samples], np.array([label for _, label in samples]), classes


@dataclass(frozen=True)
class Shards:
    """One split of a webdataset shard set: read only as a stream, by timm's reader."""
    root: str
    split: str
    size: int

    def __len__(self):
        return self.size


def list_wds(args):
    """A local webdataset shard set: --data_dir holds the .tar shards and timm's _info.json, whose "splits"
    name train, validation (or val) and test, and whose "classes" (or "num_classes") give the classes."""
    path = Path(args.data_dir) / "_info.json"
    try:
        info = json.loads(path.read_text())
        splits = info["splits"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--dataset wds reads {path} ({type(e).__name__}: {e}); write timm's _info.json "
                          "there, with the splits and their shards") from None
    names = {split: next((n for n in SPLIT_NAMES[split] if n in splits), None) for split in SPLIT_NAMES}
    classes = info.get("classes") or [str(c) for c in range(int(info.get("num_classes", 0)))]
    if not all(names.values()) or not classes:
        raise ConfigError(f"{path} must name train, validation and test splits and give \"classes\" or "
                          f"\"num_classes\" (it has splits {', '.join(splits)}); add them")
    return {split: (Shards(args.data_dir, name, int(splits[name]["num_samples"])), None)
            for split, name in names.items()}, [str(c) for c in classes]


def open_image(path):
    """Any image PIL opens -> an 8-bit PIL image, L or RGB: 16-bit and float scaled, palette and alpha
    flattened, a GIF's first frame. Raises BadData naming the file."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
    except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise BadData(f"cannot read image {path} ({type(e).__name__}); fix or remove the file") from None
    if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit scans (and PIL's 32-bit int mode holding them)
        a = np.asarray(im, dtype=np.float64) * (255 / 65535)
    elif im.mode == "F":  # float images: 0..1 or 0..255
        a = np.asarray(im, dtype=np.float64)
        a = a * 255 if a.max(initial=0) <= 1 else a
    else:
        return im.convert("L" if im.mode in GREY_MODES else "RGB")
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))


def read_image(path, img_size):
    """An image file -> uint8 (1 or 3, img_size, img_size), resized as a whole (no crop)."""
    a = np.array(open_image(path))  # writable: torch.from_numpy warns about a read-only array
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    x = torch.from_numpy(np.ascontiguousarray(a))[None].float()
    return F.interpolate(x, size=(img_size, img_size), mode="bilinear", antialias=True)[0].round().byte().numpy()


@dataclass(frozen=True)
class Source:
    """One --dataset. `list` gives its splits: uint8 images N x C x H x W, image file paths or webdataset
    Shards, with their labels; the splits it lacks are carved from train. Both paths follow from that."""
    list: Callable  # args -> ({"train": (items, labels), plus "val"/"test" where it has them}, class names)
    reads_data_dir: bool = True  # its files are in --data_dir (which must then exist)
    downloads: bool = False  # --download fetches it into --data_dir


# To add a dataset: one entry here (and its list function above). train.py's --dataset choices come from it.
DATASETS = {
    "digits": Source(list_digits, reads_data_dir=False),
    "cifar10": Source(partial(list_torchvision, "CIFAR10"), downloads=True),
    "cifar100": Source(partial(list_torchvision, "CIFAR100"), downloads=True),
    "mnist": Source(partial(list_torchvision, "MNIST"), downloads=True),
    "fashion_mnist": Source(partial(list_torchvision, "FashionMNIST"), downloads=True),
    "imagefolder": Source(list_imagefolder),
    "wds": Source(list_wds),
    "synthetic": Source(list_synthetic, reads_data_dir=False),
}


# ----------------------------------------------------------------------------------------------
# Splitting: stratified, fixed by --seed; label noise on the training labels only

def take(items, idx):
    return items[idx] if isinstance(items, np.ndarray) else [items[i] for i in idx]


def split_data(args, parts, num_classes):
    """Carve the splits a dataset lacks out of its train split: stratified by class, fixed by --seed."""
    if any(isinstance(items, Shards) for items, _ in parts.values()):
        return parts  # a stream's splits are its own: nothing to carve (load_data refuses what needs carving)
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
    if args.train_samples > len(idx):
        raise ConfigError(f"--train_samples {args.train_samples} is more than the {len(idx)} training images; "
                          f"use --train_samples {len(idx)} or less (0 = all)")
    if args.train_samples:
        idx = idx[:args.train_samples]
    held["train"] = idx
    splits = {**parts, **{name: (take(x, np.sort(i)), y[np.sort(i)]) for name, i in held.items()}}
    for name, flag in (("val", "--val_fraction"), ("test", "--test_fraction")):
        if len(splits[name][1]) == 0:
            raise ConfigError(f"the {name} split is empty; raise {flag} (or add images to the {name} folder)")
    if args.batch_size > len(splits["train"][1]):
        raise ConfigError(f"--batch_size {args.batch_size} is larger than the {len(splits['train'][1])} training "
                          f"images; use --batch_size {len(splits['train'][1])} or less")
    x_train, y_train = splits["train"]
    splits["train"] = (x_train, add_label_noise(y_train, args.label_noise, num_classes, args.seed))
    splits["train_true_labels"] = y_train  # before the noise: train.py's train/acc_clean and train/acc_noisy
    return splits


def add_label_noise(y, fraction, num_classes, seed):
    """A copy of y with round(fraction * len(y)) labels, chosen by seed, each replaced by a different class."""
    y = np.array(y)
    rng = np.random.default_rng([seed, 1])  # its own stream: the split is the same with and without noise
    n = round(fraction * len(y))
    if n and num_classes > 1:
        flip = rng.choice(len(y), n, replace=False)
        y[flip] = (y[flip] + rng.integers(1, num_classes, n)) % num_classes  # never the same class
    return y


# ----------------------------------------------------------------------------------------------
# Which path: in memory when the decoded data fits a quarter of the free memory, else streamed

def gb(n):
    return f"{n / 1e9:.2f} GB"


def free_memory(args):
    """-> (bytes free for this process's copy of the data, where). On a GPU the data sits there, and comes
    through the host on the way; every process on this machine holds its own copy."""
    import psutil
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    free, where = psutil.virtual_memory().available, "RAM"
    if torch.cuda.is_available() and not args.cpu:
        free, where = min(free, torch.cuda.mem_get_info(int(os.environ.get("LOCAL_RANK", 0)))[0]), "GPU memory"
    return free // local, where + (f" / {local} processes" if local > 1 else "")


def choose_path(args, parts):
    """-> ("memory" | "stream", why): --data_in_memory true/false, or auto's choice with its numbers."""
    if any(isinstance(items, Shards) for items, _ in parts.values()):
        if args.data_in_memory == "true":
            raise ConfigError("--dataset wds is read as a stream; drop --data_in_memory true")
        return "stream", "webdataset shards are read as a stream"
    n = sum(len(labels) for _, labels in parts.values())
    need = sum(items.nbytes if isinstance(items, np.ndarray) else len(items) * 3 * args.img_size ** 2
               for items, _ in parts.values())  # files: RGB at --img_size
    free, where = free_memory(args)
    size = f"{n:,} images are {gb(need)} decoded"
    if args.data_in_memory == "true":
        if need > free:
            raise ConfigError(f"--data_in_memory true: {size} at --img_size {args.img_size}, and the {where} has "
                              f"{gb(free)} free; use --data_in_memory auto or false to stream them")
        return "memory", f"--data_in_memory true ({size})"
    if args.data_in_memory == "false":
        return "stream", "--data_in_memory false"
    budget = free // BUDGET_SHARE
    fits = need <= budget
    return ("memory" if fits else "stream"), (f"{size}, {'within' if fits else 'over'} the budget of {gb(budget)} "
                                              f"(1/{BUDGET_SHARE} of the free {where})")


@dataclass
class Data:
    """A dataset ready to serve: its splits ({name: (items, labels)}), class names and path."""
    splits: dict
    classes: list
    path: str  # "memory" or "stream"
    why: str
    workers: int  # DataLoader worker processes
    cache: str = ""  # what the decoded cache did, for the message

    @property
    def in_chans(self):
        items = self.splits["train"][0]
        return items.shape[1] if isinstance(items, np.ndarray) else 3  # streamed files are read as RGB

    @property
    def sizes(self):
        return {f"{name}_size": len(self.splits[name][1] if self.splits[name][1] is not None else
                                    self.splits[name][0]) for name in ("train", "val", "test")}

    def loaders(self, args, data_config, device, num_processes):
        """-> train, val, test and precise-BN DataLoaders, for accelerator.prepare."""
        make = memory_loaders if self.path == "memory" else stream_loaders
        return make(args, self.splits, data_config, device, num_processes, self.workers)


def load_data(args):
    """The dataset listed, its path chosen, its images decoded (from the cache) when in memory, and split."""
    parts, classes = DATASETS[args.dataset].list(args)
    if args.dataset == "wds" and (args.train_samples or args.label_noise or args.sharpness_every):
        raise ConfigError("--train_samples, --label_noise and --sharpness_every need random access; a wds stream "
                          "has none")
    path, why = choose_path(args, parts)
    cache = ""
    if path == "memory" and any(isinstance(items, list) for items, _ in parts.values()):
        parts, cache = decode_cached(parts, args.img_size, Path(args.cache_dir or default_cache_dir()))
    # in memory a batch is one indexing call and needs no workers; a stream has timm's train.py's 4 by default
    workers = args.workers if args.workers is not None else 0 if path == "memory" else min(4, os.cpu_count())
    return Data(split_data(args, parts, len(classes)), classes, path, why, workers, cache)


# ----------------------------------------------------------------------------------------------
# The decoded cache: an image folder decoded once at --img_size, then mapped by every later run

def default_cache_dir():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lab1" / "decoded"


def cache_key(parts, img_size):
    """Covers every file's path, size, modification time and label, and img_size: a changed folder never
    matches an old cache."""
    h = hashlib.sha256(f"v{CACHE_VERSION} img_size={img_size}\n".encode())
    for split, (files, labels) in parts.items():
        for path, label in zip(files, labels, strict=True):
            st = os.stat(path)
            h.update(f"{split}\0{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    return h.hexdigest()[:32]


def decode_cached(parts, img_size, cache_dir):
    """{split: (files, labels)} -> ({split: (uint8 images, labels)}, what happened). One process builds a
    missing cache while the others wait on its lock (flock), then all map it."""
    key = cache_key(parts, img_size)
    made = [p for p in [cache_dir, *cache_dir.parents] if not p.exists()]  # ours to remove if decoding fails
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = open(cache_dir / f"{key}.lock", "w")  # closed by the with below
    except OSError as e:  # under a file, no permission, a read-only disk
        raise ConfigError(f"cannot write the decoded cache in --cache_dir {cache_dir} ({e.strerror}); "
                          "give a folder you can write") from None
    folder, note = cache_dir / key, f"read from the decoded cache {cache_dir / key}"
    try:
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            images, damage = read_cache(folder)
            if images is None:
                note = (f"decoded into the cache {folder}" + (f" (rebuilt: the old one {damage})" if damage else ""))
                images = build_cache(folder, [f for files, _ in parts.values() for f in files], img_size)
    except BaseException:
        if made:  # the folders this call made: nothing is left behind by a run that stops here (a bad image)
            shutil.rmtree(made[-1], ignore_errors=True)
        raise
    out, start = {}, 0
    for split, (files, labels) in parts.items():
        out[split] = (images[start:start + len(files)], labels)
        start += len(files)
    return out, note


def read_cache(folder):
    """-> (the cache's images, memory-mapped, or None; why it was unusable, or "")."""
    meta_path = folder / "meta.json"
    if not folder.exists():
        return None, ""
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(folder / "images.npy", mmap_mode="r")  # a cut file fails here: shorter than its header says
        if list(images.shape) != meta["shape"] or crc32(images) != meta["crc32"]:
            raise ValueError("its checksum or shape does not match")
    except (OSError, ValueError, KeyError, TypeError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        return None, f"was damaged: {str(e).splitlines()[0][:100]}"
    return (images if meta["colour"] else images[:, :1]), ""


def crc32(images, chunk=2**26):
    flat, crc = images.reshape(-1), 0
    for i in range(0, flat.size, chunk):
        crc = zlib.crc32(np.ascontiguousarray(flat[i:i + chunk]), crc)
    return crc


class DecodeFiles(torch.utils.data.Dataset):
    def __init__(self, files, img_size):
        self.files, self.img_size = files, img_size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        x = read_image(self.files[i], self.img_size)
        return np.repeat(x, 3 // x.shape[0], axis=0), x.shape[0] == 3  # the cache holds RGB, and which was


def stack_decoded(batch):
    return np.stack([x for x, _ in batch]), any(colour for _, colour in batch)


def build_cache(folder, files, img_size):
    """Decode every file with every core into folder/images.npy, written beside and renamed into place whole,
    with meta.json (shape, checksum, whether any image had colour)."""
    from numpy.lib.format import open_memmap
    for stale in folder.parent.glob(f"{folder.name}.tmp*"):  # a builder killed mid-way (we hold the lock now)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    tmp.mkdir()
    try:
        images = open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(files), 3, img_size, img_size))
        workers = min(len(os.sched_getaffinity(0)), math.ceil(len(files) / 64))
        decoded = torch.utils.data.DataLoader(DecodeFiles(files, img_size), batch_size=64, collate_fn=stack_decoded,
                                              num_workers=workers if workers > 1 else 0)
        start, colour = 0, False
        for x, c in decoded:
            images[start:start + len(x)] = x
            start, colour = start + len(x), colour or c
        images.flush()
        meta = {"shape": list(images.shape), "crc32": crc32(images), "colour": colour, "img_size": img_size,
                "files": len(files), "version": CACHE_VERSION}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.rename(tmp, folder)  # whole or not at all: a reader never sees half a cache
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return images if colour else images[:, :1]


# ----------------------------------------------------------------------------------------------
# Augmentation, named as timm's train.py names it (--hflip, --scale, --ratio, --aa, --reprob, --mixup, --cutmix)

def augmentation(args):
    """-> a description of the training augmentation these flags ask for, "" when none (config.json)."""
    used = [f"{name} {value}" for name, value in (("hflip", args.hflip), ("scale", args.scale), ("ratio", args.ratio),
                                                 ("aa", args.aa), ("reprob", args.reprob), ("mixup", args.mixup),
                                                 ("cutmix", args.cutmix)) if value]
    return ", ".join(used)


def pair(text):
    """'0.08,1' -> (0.08, 1.0): an argparse type for --scale and --ratio (a sweep passes one value)."""
    values = tuple(float(v) for v in str(text).replace(" ", ",").split(",") if v)
    if len(values) != 2 or not 0 < values[0] <= values[1]:
        raise ValueError(text)
    return values


class Mix:
    """timm's Mixup/CutMix on a batch on the device: -> (images, soft targets with label smoothing folded in);
    off, it returns the batch as it is."""

    def __init__(self, args, num_classes):
        self.on = bool(args.mixup or args.cutmix)
        if self.on:
            from timm.data import Mixup
            self.mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix,
                               label_smoothing=args.label_smoothing, num_classes=num_classes)

    def __call__(self, x, y):
        return self.mixup(x, y) if self.on else (x, y)


def posterize(img, bits_to_keep, **kwargs):
    """timm's posterize, where keeping 0 bits gives a black image, as in the TensorFlow RandAugment timm follows
    and in older Pillow. Pillow 13 refuses 0 bits, which timm asks for at the top magnitude of an `inc1` spec
    (rand-m9-mstd0.5-inc1 draws it for 2% of its ops): the run would end in a traceback in its first epoch."""
    from PIL import Image
    from timm.data import auto_augment
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


def use_own_posterize():
    """timm's augment ops with posterize (above) in place of its own; before any timm augment transform is made."""
    from timm.data import auto_augment
    for name, op in auto_augment.NAME_TO_OP.items():
        if op is auto_augment.posterize:
            auto_augment.NAME_TO_OP[name] = posterize


def aa_transform(spec, img_size, mean):
    """timm's RandAugment/AutoAugment/AugMix on a PIL image, from a timm --aa spec such as rand-m9-mstd0.5,
    with the parameters timm's create_transform gives it."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
    use_own_posterize()
    params = dict(translate_const=int(img_size * 0.45), img_mean=tuple(min(255, round(255 * m)) for m in mean))
    make = (rand_augment_transform if spec.startswith("rand") else
            augment_and_mix_transform if spec.startswith("augmix") else auto_augment_transform)
    return make(spec, params)


class DeviceAugment:
    """The in-memory path's training augmentation, on a whole batch on the device: random-resized crop
    (torchvision's roi_align, one call) and flip; RandAugment/AutoAugment per image with timm's PIL transform
    (on the host: the one costly step); random erasing with timm's RandomErasing, after normalisation."""

    def __init__(self, args, mean, std, device):
        from timm.data.random_erasing import RandomErasing
        self.scale, self.ratio, self.hflip = args.scale, args.ratio or (3 / 4, 4 / 3), args.hflip
        self.aa = aa_transform(args.aa, args.img_size, mean) if args.aa else None
        self.erase = RandomErasing(args.reprob, mode="const", device=device) if args.reprob else None

    def images(self, x):
        """uint8 (N, C, H, W) -> the same after RandAugment/AutoAugment, image by image."""
        if not self.aa:
            return x
        from PIL import Image
        out = [np.asarray(self.aa(Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))))
               for a in x.cpu().numpy()]
        return torch.from_numpy(np.stack([a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in out])).to(x.device)

    def geometry(self, x, size):
        """float (N, C, H, W) -> (N, C, size, size): a random crop of each image (area and aspect drawn as timm's
        RandomResizedCrop draws them), resized, then flipped with probability hflip."""
        n, _, h, w = x.shape
        if self.scale:
            area = torch.empty(n).uniform_(*self.scale) * h * w
            aspect = torch.exp(torch.empty(n).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw, ch = (area * aspect).sqrt().clamp(max=w), (area / aspect).sqrt().clamp(max=h)
            x0, y0 = torch.rand(n) * (w - cw), torch.rand(n) * (h - ch)
            boxes = torch.stack([torch.arange(n, dtype=torch.float), x0, y0, x0 + cw, y0 + ch], 1).to(x.device)
            from torchvision.ops import roi_align
            x = roi_align(x, boxes, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
        elif h != size or w != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        if self.hflip:
            flip = (torch.rand(n, device=x.device) < self.hflip).view(-1, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        return x

    def normalised(self, x):
        return self.erase(x) if self.erase else x


# ----------------------------------------------------------------------------------------------
# In memory: a whole batch is indexed, resized, augmented and normalised in one call on the device

class TensorImages(torch.utils.data.Dataset):
    def __init__(self, images, labels, img_size, mean, std, memory_format=torch.contiguous_format, augment=None):
        self.images, self.labels, self.img_size = images, labels, img_size  # images: uint8 (N, C, H, W)
        self.mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
        self.memory_format, self.augment = memory_format, augment

    def __len__(self):
        return len(self.labels)

    def __getitems__(self, indices):  # DataLoader fetches a batch with one call: no per-sample collate
        indices = torch.as_tensor(indices, device=self.images.device)  # one copy to the GPU, not two
        if self.augment:
            x = self.augment.geometry(self.augment.images(self.images[indices]).float().div_(255), self.img_size)
            x = self.augment.normalised((x - self.mean) / self.std)
            return x.contiguous(memory_format=self.memory_format), self.labels[indices]
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


def statistics(data_config, channels):
    """The model's mean and std; a grey image gets one channel with the mean of timm's RGB statistics."""
    mean, std = data_config["mean"], data_config["std"]
    if channels == 1:
        mean, std = [float(np.mean(mean))], [float(np.mean(std))]
    return tuple(mean), tuple(std)


def memory_loaders(args, splits, data_config, device, num_processes, workers):
    mean, std = statistics(data_config, splits["train"][0].shape[1])
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    augment = DeviceAugment(args, mean, std, device) if args.hflip or args.scale or args.aa or args.reprob else None

    def make(name, augment=None):
        images, labels = splits[name]
        images = np.require(images, requirements=("C", "W"))  # a copy of a split still in the read-only cache map
        return TensorImages(torch.from_numpy(images).to(device),
                            torch.from_numpy(np.asarray(labels)).long().to(device), args.img_size, mean, std,
                            memory_format, augment)

    context = worker_context(num_processes, workers)

    def loader(ds, batch_size, shuffle=False, drop_last=False):
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                                           collate_fn=keep_batch, num_workers=workers, multiprocessing_context=context,
                                           worker_init_fn=plain_malloc)

    train, val, test = make("train"), make("val"), make("test")
    train_aug = TensorImages(train.images, train.labels, args.img_size, mean, std, memory_format, augment)
    return eval_and_train_loaders(args, loader, train_aug, val, test, train, max(args.batch_size, 512), num_processes)


def eval_and_train_loaders(args, loader, train, val, test, train_plain, eval_batch, num_processes):
    # The training loader drops a short last batch, as the reference scripts do: a batch of one image breaks
    # batch norm, and every update then sees batch_size images. Precise BN reads unaugmented training images,
    # with --ghost_batch_size in whole ghost groups (batch_size, a multiple of them, is at most this share).
    bn_batch = max(1, min(eval_batch, len(train_plain) // num_processes))
    if args.ghost_batch_size:
        bn_batch = max(args.ghost_batch_size, bn_batch - bn_batch % args.ghost_batch_size)
    return (loader(train, args.batch_size, shuffle=True, drop_last=True), loader(val, eval_batch),
            loader(test, eval_batch), loader(train_plain, bn_batch, drop_last=True))


def in_order(dataset, like):
    """A loader over dataset in its order, batched, collated and read as the loader `like` (validation's): the
    training split as evaluation sees it (train.py's train/acc_clean and train/acc_noisy, lab1/interpolate.py)."""
    return torch.utils.data.DataLoader(dataset, batch_size=like.batch_size, collate_fn=like.collate_fn,
                                       num_workers=like.num_workers, persistent_workers=like.persistent_workers,
                                       pin_memory=like.pin_memory, multiprocessing_context=like.multiprocessing_context,
                                       worker_init_fn=like.worker_init_fn)


# ----------------------------------------------------------------------------------------------
# Streaming: timm's transforms in DataLoader workers, on PIL images read as they are needed

class ArrayImages(torch.utils.data.Dataset):
    """uint8 arrays (N, C, H, W) served as PIL images through a transform, as files would be."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        a = self.images[i]
        return self.transform(Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))), int(self.labels[i])


class FileImages(torch.utils.data.Dataset):
    """Image files through a transform. A file that cannot be read stops the run, naming it (timm's own
    ImageDataset skips it with a warning: a silently smaller epoch)."""

    def __init__(self, files, labels, transform):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(open_image(self.files[i]).convert("RGB")), int(self.labels[i])


def stream_transforms(args, mean, std, channels):
    """-> (train, eval) transforms from timm's create_transform. Evaluation (and training without augmentation)
    resizes the whole image to img_size x img_size, as the in-memory path does: timm's "squash" at crop_pct 1."""
    from timm.data import create_transform
    from torchvision import transforms
    size = (channels, args.img_size, args.img_size)
    plain = create_transform(size, is_training=False, interpolation="bilinear", crop_pct=1.0, crop_mode="squash",
                             mean=mean, std=std)
    if not (args.hflip or args.scale or args.aa or args.reprob):
        return plain, plain
    use_own_posterize()
    primary, secondary, final = create_transform(
        size, is_training=True, separate=True, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        color_jitter=None, auto_augment=args.aa or None, interpolation="bilinear", re_prob=args.reprob,
        mean=mean, std=std)
    if not args.scale:  # no random-resized crop asked for: the whole image, as in evaluation
        primary = transforms.Compose([transforms.Resize(size[1:]),
                                      *([transforms.RandomHorizontalFlip(args.hflip)] if args.hflip else [])])
    return transforms.Compose([primary, secondary, final]), plain


def stream_dataset(items, labels, transform, args, training, workers, context):
    if isinstance(items, np.ndarray):
        return ArrayImages(items, labels, transform)
    if isinstance(items, list):
        return FileImages(items, labels, transform)
    from timm.data import create_dataset
    ds = create_dataset(f"wds/{args.dataset}", root=items.root, split=items.split, is_training=training,
                        batch_size=args.batch_size, seed=args.seed)
    # Accelerate gives each rank its part of an iterable dataset (the main process reads, and sends each its
    # batches), so timm's reader must not split by rank as well
    ds.reader.dist_rank, ds.reader.dist_num_replicas = 0, 1
    ds.transform = transform
    ds.set_loader_cfg(num_workers=workers)
    if context:  # timm made its epoch counter in the fork context; a forkserver's workers cannot be sent it
        ds.reader.epoch_count.shared_epoch = context.Value("i", 0)
    return ds


def mallopt():
    """glibc's mallopt, or None: not Linux, another C library (musl), or the user set glibc's MALLOC_* variables."""
    if sys.platform != "linux" or any(name.startswith("MALLOC_") for name in os.environ):
        return None
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def keep_freed_memory():
    """For the process that trains on the CPU (train.py's --keep_freed_memory). glibc's malloc gives every block
    over its mmap threshold (at most 32 MB: one layer's activations, batch 64 at 128 px, are above it) a mmap of its
    own and unmaps it when freed, so each update the kernel faults in and zeroes its activations anew: a fifth of a
    CPU run's time went to the kernel (10 M page faults in 40 updates). Freed blocks stay in the heap for the next
    update instead, as jemalloc and tcmalloc keep them; the process's peak resident memory rises by what the heap
    holds between updates. -> whether it applied."""
    global KEPT_FREED
    set_option = mallopt()
    # M_MMAP_MAX (-4) = 0: no block gets a mmap of its own; M_TRIM_THRESHOLD (-1), bytes: never give the heap back
    KEPT_FREED = bool(set_option and set_option(-4, 0) and set_option(-1, 2**31 - 1))
    return KEPT_FREED


KEPT_FREED = False  # this process keeps freed blocks; a loader worker forked from it inherits the setting


def plain_malloc(worker_id):
    """A loader worker forked from a process that keeps freed blocks goes back to glibc's limits, and gives back
    the free blocks it inherited: its own allocations, carved out of them, would copy the parent's pages (copy on
    write), hundreds of MB a worker (bench/data_paths.py --only memory)."""
    if KEPT_FREED:
        set_option = mallopt()
        set_option(-4, 65536)  # glibc's default M_MMAP_MAX
        set_option(-1, 128 * 1024)  # and M_TRIM_THRESHOLD, bytes
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def worker_context(num_processes, workers):
    """How loader workers start: forked, except in a rank of several on CPython before 3.12, where a fork can
    deadlock in the child (python/cpython#112275: a lock the ranks' gloo threads take without the GIL is copied
    held; seen here as a 2-rank run hung for good). There they fork from a forkserver that has imported the
    script's packages once (no threads, and no import in each worker)."""
    if not workers or num_processes < 2 or sys.version_info >= (3, 12):
        return None
    import multiprocessing
    context = multiprocessing.get_context("forkserver")
    # Not "__main__": before 3.13 the forkserver never imports it (python/cpython#126631), nor modules beside the
    # script (its sys.path is Python's, cpython#117378); each worker would run train.py's imports anew (seconds)
    context.set_forkserver_preload(["torch", "timm", "accelerate", "wandb"])
    first = context.Process(target=int)  # starts once the forkserver has imported them: set-up, not training time
    first.start()
    first.join()
    return context


def stream_loaders(args, splits, data_config, device, num_processes, workers):
    items = splits["train"][0]
    channels = items.shape[1] if isinstance(items, np.ndarray) else 3
    mean, std = statistics(data_config, channels)
    train_tf, eval_tf = stream_transforms(args, mean, std, channels)

    context = worker_context(num_processes, workers)

    def loader(ds, batch_size, shuffle=False, drop_last=False):
        iterable = isinstance(ds, torch.utils.data.IterableDataset)
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle and not iterable,
                                           drop_last=drop_last, num_workers=workers, multiprocessing_context=context,
                                           persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                                           worker_init_fn=plain_malloc)

    train = stream_dataset(*splits["train"], train_tf, args, True, workers, context)
    val, test = (stream_dataset(*splits[name], eval_tf, args, False, workers, context) for name in ("val", "test"))
    plain = stream_dataset(*splits["train"], eval_tf, args, False, workers, context)
    return eval_and_train_loaders(args, loader, train, val, test, plain, args.batch_size, num_processes)


def checked(loader, accelerator, streaming):
    """The training batches; on the streaming path every rank learns, with the batch, whether any rank met an
    image it cannot read, and all raise BadData at the same step (no rank is left waiting in a collective)."""
    if not streaming:
        yield from loader
        return
    batches = iter(loader)
    while True:
        try:
            batch, bad = next(batches), ""
        except StopIteration:
            return
        except BadData as e:
            batch, bad = None, str(e)
        if accelerator.num_processes > 1 and accelerator.reduce(torch.tensor([float(bool(bad))],
                                                                             device=accelerator.device)).item():
            from accelerate.utils import gather_object
            bad = next(b for b in gather_object([bad]) if b)
        if bad:
            raise BadData(bad)
        yield batch
