"""train.py's data: datasets read once into memory as uint8 tensors, split, and served a whole batch at a time.

    splits, classes = load_splits(args)      # {"train"|"val"|"test": (x uint8 NCHW, y int)}, class names
    train, val, test = build_datasets(args, splits, mean, std, device)
"""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "imagefolder", "synthetic")
SYNTHETIC_SIZE = 5000  # images in --dataset synthetic: random uint8 RGB at img_size, 10 classes
VAL_NAMES = ("val", "validation")  # torchvision/timm and Hugging Face imagefolder spellings of the val split
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


class ConfigError(Exception):
    """A user mistake: train.py's main() prints it as one line and exits with code 2."""


# ----------------------------------------------------------------------------------------------
# Reading: each dataset as uint8 arrays (N, C, H, W) and integer labels

def load_splits(args):
    """-> ({"train", "val", "test": (x, y)}, class names): the dataset's own splits, the rest carved from train."""
    parts, classes = load_arrays(args)
    return split_data(args, parts, len(classes)), classes


def load_arrays(args):
    """-> ({"train": (x, y)} plus "val" and "test" where the dataset has them, class names)."""
    if args.dataset == "digits":  # 1,797 real 8x8 scans, values 0..16: the file sklearn's load_digits reads
        # finding the package does not import it (1 s of start-up)
        path = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0]) / "datasets/data/digits.csv.gz"
        data = np.loadtxt(path, delimiter=",")
        x = np.round(data[:, :-1].reshape(-1, 1, 8, 8) * (255 / 16)).astype(np.uint8)
        return {"train": (x, data[:, -1].astype(int))}, [str(c) for c in range(10)]
    if args.dataset == "synthetic":  # for benchmarks: the shape of real data with none of its cost
        rng = np.random.default_rng(args.seed)
        x = rng.integers(0, 256, (SYNTHETIC_SIZE, 3, args.img_size, args.img_size), dtype=np.uint8)
        return {"train": (x, np.arange(SYNTHETIC_SIZE) % 10)}, [str(c) for c in range(10)]
    if args.dataset == "imagefolder":
        return load_imagefolder(Path(args.data_dir), args.img_size)
    return load_torchvision(args)


def load_torchvision(args):
    import torchvision.datasets as tvd
    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "mnist": tvd.MNIST,
           "fashion_mnist": tvd.FashionMNIST}[args.dataset]
    created = not Path(args.data_dir).exists()
    try:
        train, test = (cls(args.data_dir, train=t, download=args.download) for t in (True, False))
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


def load_imagefolder(root, img_size):
    """Class subfolders, flat (root/<class>/) or split (root/train/<class>/ with val/ or validation/ and test/
    beside it, each optional). Labels come from train's class names, so a class means the same label in every
    split; a class that val or test lack is fine, one that train lacks is an error. Hidden entries are skipped."""
    if not root.is_dir():
        raise ConfigError(f"--data_dir {root} is not a folder; give a folder of class subfolders")
    if not (root / "train").is_dir():
        x, y, classes = read_split(root, None, img_size)
        return {"train": (x, y)}, classes
    vals = [name for name in VAL_NAMES if (root / name).is_dir()]
    if len(vals) > 1:
        raise ConfigError(f"--data_dir {root} has both val/ and validation/; keep one of them")
    x, y, classes = read_split(root / "train", None, img_size)
    parts = {"train": (x, y)}
    for split, folder in (("val", vals[0] if vals else None), ("test", "test")):
        if folder and (root / folder).is_dir():
            x, y, _ = read_split(root / folder, classes, img_size)
            parts[split] = (x, y)
    channels = max(x.shape[1] for x, _ in parts.values())  # a colour image anywhere makes every split RGB
    return {k: (np.repeat(x, channels // x.shape[1], axis=1), y) for k, (x, y) in parts.items()}, classes


def read_split(folder, classes, img_size):
    """-> (uint8 images N x C x img_size x img_size, labels, class names). classes: train's, or None for train."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
    names = visible_dirs(folder)
    if not names:
        raise ConfigError(f"--data_dir {folder} has no class subfolders; put each class's images in a subfolder")
    if classes is None:
        classes = names
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise ConfigError(f"{folder} has class folder(s) {', '.join(unknown)} that train/ lacks; "
                          "add them to train/ or remove them")

    def visible_image(path):
        parts = Path(path).relative_to(folder).parts
        return path.lower().endswith(IMG_EXTENSIONS) and not any(p.startswith(".") for p in parts)

    index = {c: i for i, c in enumerate(classes)}
    samples = make_dataset(folder, {c: index[c] for c in names}, is_valid_file=visible_image, allow_empty=True)
    empty = sorted(set(names) - {classes[label] for _, label in samples})
    if empty:
        raise ConfigError(f"class folder(s) {', '.join(empty)} in {folder} hold no images; "
                          "add images or remove the folder")
    images = [read_image(path, img_size) for path, _ in samples]
    channels = max(im.shape[0] for im in images)
    x = np.stack([np.repeat(im, channels // im.shape[0], axis=0) for im in images])
    return x, np.array([label for _, label in samples]), classes


def read_image(path, img_size):
    """Any image PIL opens -> uint8 (1 or 3, img_size, img_size): 16-bit and float scaled, palette and alpha
    flattened to RGB."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
    except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise ConfigError(f"cannot read image {path} ({type(e).__name__}); fix or remove the file") from None
    if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit scans (and PIL's 32-bit int mode holding them)
        a = np.asarray(im, dtype=np.float64) * (255 / 65535)
    elif im.mode == "F":  # float images: 0..1 or 0..255
        a = np.asarray(im, dtype=np.float64)
        a = a * 255 if a.max(initial=0) <= 1 else a
    else:
        a = np.asarray(im.convert("L" if im.mode in GREY_MODES else "RGB"))
    a = np.clip(np.round(a), 0, 255).astype(np.uint8)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    x = torch.from_numpy(np.ascontiguousarray(a))[None].float()
    return F.interpolate(x, size=(img_size, img_size), mode="bilinear", antialias=True)[0].round().byte().numpy()


# ----------------------------------------------------------------------------------------------
# Splitting: stratified, fixed by --seed; label noise on the training labels only

def split_data(args, parts, num_classes):
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
    if args.train_samples > len(idx):
        raise ConfigError(f"--train_samples {args.train_samples} is more than the {len(idx)} training images; "
                          f"use --train_samples {len(idx)} or less (0 = all)")
    if args.train_samples:
        idx = idx[:args.train_samples]
    held["train"] = idx
    splits = {**parts, **{name: (x[np.sort(i)], y[np.sort(i)]) for name, i in held.items()}}
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
# Serving: a whole batch is indexed, resized and normalised in one call on the device

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
