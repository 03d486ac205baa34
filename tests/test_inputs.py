"""Valid but unusual inputs end with exit 0 and the right counts: odd batch remainders, every ImageFolder layout
users keep, every image mode PIL opens, tiny splits; and what a terminal user, --help and folder names show."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, TINY, clean_env, inspect_wandb, train_many

sys.path.insert(0, str(ROOT))
import data  # noqa: E402
import train  # noqa: E402


def config_of(out):
    return json.loads((out / "config.json").read_text())


def write_digits(folder, indices, classes=range(10)):
    """Real digits as PNG files in class subfolders, as a user would have them."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    for i in indices:
        if digits.target[i] in classes:
            path = folder / f"class_{digits.target[i]}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((digits.images[i] * 15).astype("uint8")).save(path)


# (layout name, folders to write with the digits they get, expected (train, val, test, classes))
LAYOUTS = [
    ("flat", {"": range(200)}, (140, 20, 40, 10)),
    ("train+val", {"train": range(150), "val": range(150, 200)}, (120, 50, 30, 10)),
    ("train+validation", {"train": range(150), "validation": range(150, 200)}, (120, 50, 30, 10)),
    ("train+val+test", {"train": range(100), "val": range(100, 150), "test": range(150, 200)}, (100, 50, 50, 10)),
    ("train+test", {"train": range(150), "test": range(150, 200)}, (130, 20, 50, 10)),  # val: 10% a class, rounded
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    for name, parts, _ in LAYOUTS:
        for sub, indices in parts.items():
            write_digits(root / name / sub, indices)
    # test/ lacks a class, and hidden folders sit beside the classes: labels must still match train's
    write_digits(root / "gaps/train", range(150))
    write_digits(root / "gaps/test", range(150, 200), classes=range(1, 10))
    for hidden in ("gaps/train/.ipynb_checkpoints", "gaps/.cache", "gaps/train/class_3/.thumbs"):
        (root / hidden).mkdir(parents=True)
        Image.new("L", (8, 8)).save(root / hidden / "x.png")
    return root


@pytest.mark.parametrize("name, parts, sizes", LAYOUTS, ids=[layout[0] for layout in LAYOUTS])
def test_each_imagefolder_layout_gives_its_splits(folders, name, parts, sizes):
    args = train.parse_args(["--dataset=imagefolder", f"--data_dir={folders / name}"])
    loaded = data.load_data(args)
    splits, classes = loaded.splits, loaded.classes
    assert tuple(len(splits[s][1]) for s in ("train", "val", "test")) + (len(classes),) == sizes
    assert classes == [f"class_{c}" for c in range(10)]


def test_labels_follow_class_names_in_every_split_and_hidden_entries_are_skipped(folders):
    args = train.parse_args(["--dataset=imagefolder", f"--data_dir={folders / 'gaps'}"])
    (parts, classes) = data.DATASETS["imagefolder"].list(args)
    assert classes == [f"class_{c}" for c in range(10)]  # no ".cache" or ".ipynb_checkpoints" class
    assert len(parts["train"][1]) == 150  # class_3/.thumbs/x.png is not an image of class 3
    from sklearn.datasets import load_digits
    truth = load_digits().target[150:200]
    assert sorted(parts["test"][1]) == sorted(t for t in truth if t != 0)  # class_1 is still label 1, not 0


def test_every_image_mode_reads_as_its_grey_level(tmp_path):
    grey = 100  # of 255
    flat = np.full((4, 4), grey, np.uint8)
    images = {"1": Image.new("1", (4, 4), 1), "L": Image.fromarray(flat), "LA": Image.new("LA", (4, 4), (grey, 7)),
              "P": Image.fromarray(flat).convert("P"), "RGB": Image.new("RGB", (4, 4), (grey,) * 3),
              "RGBA": Image.new("RGBA", (4, 4), (grey, grey, grey, 9)),
              "CMYK": Image.new("RGB", (4, 4), (grey,) * 3).convert("CMYK"),
              "I;16": Image.fromarray(np.full((4, 4), grey * 257, np.uint16)),
              "I": Image.fromarray(np.full((4, 4), grey * 257, np.int32)),
              "F": Image.fromarray(np.full((4, 4), grey / 255, np.float32))}
    for mode, image in images.items():
        path = tmp_path / f"{mode}.{'tiff' if mode in ('I', 'F', 'CMYK') else 'png'}"
        image.save(path)
        x = data.read_image(path, 8)
        expected = 255 if mode == "1" else grey
        assert x.dtype == np.uint8 and x.shape[1:] == (8, 8), mode
        assert np.abs(x.astype(int) - expected).max() <= 1, (mode, x.min(), x.max())


@pytest.mark.slow
def test_unusual_sizes_train_to_the_end_with_the_images_counted(workdir, folders):
    # a last batch of one image (it broke batch norm), tiny splits, and real layouts, one epoch each
    cases = {f"bs{bs}": [f"--batch_size={bs}", f"--train_samples={n}"] for bs, n in
             ((2, 65), (17, 35), (37, 75), (74, 149), (32, 257))}
    cases["tiny_splits"] = ["--val_fraction=0.005", "--test_fraction=0.005", "--train_samples=64"]
    for name, _, _ in LAYOUTS:
        cases[name] = ["--dataset=imagefolder", f"--data_dir={folders / name}"]
    cases["gaps"] = ["--dataset=imagefolder", f"--data_dir={folders / 'gaps'}"]
    argvs = [["--img_size=8", "--epochs=1", "--batch_size=32", "--wandb_mode=disabled", *flags, f"--output_dir={name}"]
             for name, flags in cases.items()]
    res = train_many(argvs, workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in cases:
        config = config_of(workdir / name)
        summary = json.loads((workdir / name / "summary.json").read_text())
        assert summary["status"] == "finished", name
        bs = config["batch_size"]
        assert config["examples_per_epoch"] == config["train_size"] // bs * bs == summary["examples"], name
    assert [config_of(workdir / f"bs{bs}")["train_size"] for bs in (2, 17, 37, 74, 32)] == [65, 35, 75, 149, 257]
    assert config_of(workdir / "tiny_splits")["val_size"] >= 1 and config_of(workdir / "tiny_splits")["test_size"] >= 1


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    blocks = re.split(r"\n  (?=--)", capsys.readouterr().out)[1:]  # one per option, after the usage lines
    assert len(blocks) == len(train.build_parser()._actions) - 1  # all but -h
    for block in blocks:
        assert "(default: " in " ".join(block.split()), block


@pytest.mark.slow
def test_a_terminal_user_sees_each_point_and_folders_match_wandbs(workdir):
    # stderr on a terminal (the progress bar's), stdout read here: each evaluation point is still printed
    leader, follower = os.openpty()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, "--wandb_tags= a , b ,"], cwd=workdir,
                          env=clean_env(HOME=str(workdir)), stdout=subprocess.PIPE, stderr=follower, text=True,
                          timeout=240)
    os.close(follower)
    os.close(leader)
    assert proc.returncode == 0
    assert proc.stdout.count("val/acc=") == 2
    [out] = (workdir / "runs").iterdir()
    [wandb_dir] = (workdir / "wandb").glob("offline-run-*")
    assert wandb_dir.name == f"offline-{out.name}"  # runs/run-<time>-<id> beside wandb/offline-run-<time>-<id>
    recorded = inspect_wandb(wandb_dir)
    assert recorded["tags"] == ["a", "b"]

