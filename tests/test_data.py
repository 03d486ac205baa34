"""Bring your own data: both paths (in memory, streamed through timm's transforms) agree, auto picks between them,
the decoded cache is built once and never served stale, split folders and GIFs are read as what they are,
webdataset shards train, and bad data is one line on every path."""

import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, clean_env, inspect_wandb, run, summary_of, train_many

sys.path.insert(0, str(ROOT))
import data  # noqa: E402
import train  # noqa: E402


def photo(seed, size=(20, 14)):
    """A small RGB image with structure (gradients and a block), not flat colour."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)], -1) + rng.integers(0, 60, (h, w, 3))
    a[rng.integers(0, h // 2):, rng.integers(0, w // 2):] //= 2
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def image_folder(root, classes=4, per_class=10, formats=("jpg", "png"), seed=0):
    for c in range(classes):
        for i in range(per_class):
            path = root / f"class_{c}" / f"{i}.{formats[i % len(formats)]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            photo(seed + 100 * c + i).save(path)
    return root


def args_for(folder, *flags):
    return train.parse_args(["--dataset=imagefolder", f"--data_dir={folder}", "--img_size=16", "--batch_size=8",
                             "--workers=0", *flags])


def first_batches(loaded, args):
    """The first training batch (shuffled, with one fixed torch seed), and every image of val and test."""
    config = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    train_dl, val_dl, test_dl, _ = loaded.loaders(args, config, torch.device("cpu"), 1)
    torch.manual_seed(0)
    whole = [[torch.cat(parts) for parts in zip(*loader, strict=True)] for loader in (val_dl, test_dl)]
    return [next(iter(train_dl)), *whole]


def test_both_paths_give_the_same_split_labels_and_first_batches(tmp_path):
    folder = image_folder(tmp_path / "imgs")
    memory = data.load_data(args_for(folder, "--data_in_memory=true"))
    stream = data.load_data(args_for(folder, "--data_in_memory=false"))
    assert (memory.path, stream.path) == ("memory", "stream")
    assert memory.classes == stream.classes == [f"class_{c}" for c in range(4)]
    for name in ("train", "val", "test"):
        assert np.array_equal(memory.splits[name][1], stream.splits[name][1]), name
        files = stream.splits[name][0]
        same = [np.array_equal(data.read_image(f, 16), x) for f, x in zip(files, memory.splits[name][0], strict=True)]
        assert same == [True] * len(files), name  # the same images, in the same order
    plain = args_for(folder)
    for (xm, ym), (xs, ys) in zip(first_batches(memory, plain), first_batches(stream, plain), strict=True):
        assert torch.equal(ym, ys) and xm.shape == xs.shape == (len(ym), 3, 16, 16)
        # PIL's and torch's antialiased bilinear resize round differently: at most 2 levels of 255, normalised
        assert (xm - xs).abs().max().item() <= 2 / 255 / 0.224 + 1e-6


def test_auto_picks_each_path_at_the_budgets_edge(tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "imgs")
    need = 40 * 3 * 16 * 16  # bytes: 40 images, RGB, 16 x 16
    for free, path in ((need * data.BUDGET_SHARE, "memory"), (need * data.BUDGET_SHARE - 1, "stream")):
        monkeypatch.setattr(data, "free_memory", lambda args, free=free: (free, "RAM"))
        loaded = data.load_data(args_for(folder))
        assert loaded.path == path and ("within" if path == "memory" else "over") in loaded.why


def test_too_large_for_data_in_memory_true_is_refused_before_decoding(tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "imgs")
    monkeypatch.setattr(data, "free_memory", lambda args: (1000, "RAM"))
    with pytest.raises(data.ConfigError, match=r"40 images are 0\.00 GB decoded at --img_size 16, and the RAM has "
                                               r"0\.00 GB free; use --data_in_memory auto or false"):
        data.load_data(args_for(folder, "--data_in_memory=true", f"--cache_dir={tmp_path / 'cache'}"))
    assert not (tmp_path / "cache").exists()  # refused before any decoding


def decode(folder, cache):
    parts, _ = data.list_imagefolder(args_for(folder))
    return data.decode_cached(parts, 16, cache), data.cache_key(parts, 16)


def test_the_cache_is_built_once_reused_and_never_served_stale(tmp_path):
    folder, cache = image_folder(tmp_path / "imgs"), tmp_path / "cache"
    (first, note), key = decode(folder, cache)
    assert note.startswith("decoded into") and (cache / key / "images.npy").exists()
    (again, note), key_again = decode(folder, cache)
    assert note.startswith("read from") and key_again == key
    assert np.array_equal(first["train"][0], again["train"][0])

    photo(999).save(folder / "class_0" / "added.png")  # one image added
    (added, note), key_added = decode(folder, cache)
    assert note.startswith("decoded into") and key_added != key and len(added["train"][0]) == 41
    replaced = folder / "class_1" / "3.png"
    photo(12345, size=(30, 30)).save(replaced)  # one replaced under the same name
    (edited, note), key_edited = decode(folder, cache)
    assert note.startswith("decoded into") and key_edited != key_added
    parts, _ = data.list_imagefolder(args_for(folder))
    i = parts["train"][0].index(str(replaced))
    assert np.array_equal(edited["train"][0][i], data.read_image(replaced, 16))
    assert not np.array_equal(added["train"][0][i], edited["train"][0][i])


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "no meta"])
def test_a_cut_or_corrupt_cache_is_rebuilt(tmp_path, damage):
    folder, cache = image_folder(tmp_path / "imgs"), tmp_path / "cache"
    (good, _), key = decode(folder, cache)
    good = np.array(good["train"][0])  # a copy: the cache is memory-mapped
    images = cache / key / "images.npy"
    if damage == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
    elif damage == "flipped byte":
        raw = bytearray(images.read_bytes())
        raw[-5] ^= 0xFF
        images.write_bytes(bytes(raw))
    else:
        (cache / key / "meta.json").unlink()
    (rebuilt, note), _ = decode(folder, cache)
    assert "rebuilt" in note
    assert np.array_equal(good, rebuilt["train"][0])


@pytest.mark.slow
def test_two_processes_building_one_cache_leave_one_good_cache(tmp_path):
    folder, cache = image_folder(tmp_path / "imgs", per_class=30), tmp_path / "cache"
    code = f"""
import sys, time, pathlib, hashlib
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})
import numpy as np, data, train
ready = pathlib.Path({str(tmp_path)!r}) / f"ready{{sys.argv[1]}}"
ready.touch()
while len(list(ready.parent.glob("ready*"))) < 2:  # both imported: start decoding together
    time.sleep(0.01)
args = train.parse_args(["--dataset=imagefolder", "--data_dir={folder}", "--img_size=16"])
parts, _ = data.list_imagefolder(args)
out, note = data.decode_cached(parts, 16, pathlib.Path({str(cache)!r}))
print(hashlib.sha256(np.ascontiguousarray(out["train"][0])).hexdigest(), note.split()[0])
"""
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    digests, notes = zip(*(out.split() for out, _ in results), strict=True)
    assert digests[0] == digests[1] and sorted(notes) == ["decoded", "read"]  # one built it, one mapped it
    folder_name, lock = sorted(p.name for p in cache.iterdir())  # no half-built folder beside them
    assert lock == folder_name + ".lock" and (cache / folder_name / "meta.json").exists()


# ----------------------------------------------------------------------------------------------
# Folders as users keep them (issue 22): split folders under other names, GIFs

SPLIT_LAYOUTS = [
    ({"Train": 6, "Val": 2, "Test": 2}, (24, 8, 8)),
    ({"training": 6, "testing": 2}, (20, 4, 8)),  # val carved from training: 1 image a class (10 %, rounded)
    ({"train": 6, "valid": 2}, (20, 8, 4)),  # test carved from train: 1 image a class (20 % of 6, rounded)
]


@pytest.mark.parametrize("layout, sizes", SPLIT_LAYOUTS, ids=["Train-Val-Test", "training-testing", "train-valid"])
def test_split_folders_under_other_names_are_read_as_splits_never_classes(tmp_path, layout, sizes):
    for split, per_class in layout.items():
        image_folder(tmp_path / "imgs" / split, per_class=per_class)
    loaded = data.load_data(args_for(tmp_path / "imgs"))
    assert loaded.classes == [f"class_{c}" for c in range(4)]
    assert tuple(len(loaded.splits[s][1]) for s in ("train", "val", "test")) == sizes


@pytest.mark.parametrize("folders, words", [
    (["Val", "Test"], "has split folder(s) Val/, Test/ but no train/"),
    (["train", "val", "valid"], "has both val/ and valid/: two val splits"),
    (["train", "cats"], "mixes split folders (train/) with other folders (cats/)"),
])
def test_ambiguous_split_folders_are_refused_naming_them(tmp_path, folders, words):
    for name in folders:
        image_folder(tmp_path / "imgs" / name, classes=2, per_class=2)
    with pytest.raises(data.ConfigError) as e:
        data.load_data(args_for(tmp_path / "imgs"))
    assert words in str(e.value)


def test_gifs_are_read_alone_and_beside_other_images(tmp_path):
    root = image_folder(tmp_path / "imgs", classes=2, per_class=6)
    (root / "class_gif").mkdir()
    for i in range(6):
        photo(i).convert("P").save(root / "class_gif" / f"{i}.gif")  # a class of GIFs only
    photo(50).convert("P").save(root / "class_0" / "extra.gif")  # and one beside PNGs and JPEGs
    parts, classes = data.list_imagefolder(args_for(root))
    assert classes == ["class_0", "class_1", "class_gif"]
    assert np.bincount(parts["train"][1]).tolist() == [7, 6, 6]
    x = data.read_image(root / "class_0" / "extra.gif", 16)
    assert x.shape == (3, 16, 16) and x.std() > 10  # a real picture, in colour


# ----------------------------------------------------------------------------------------------
# Training on each path

def write_shards(root, per_split=(("train", 96, 2), ("validation", 32, 1), ("test", 32, 1)), classes=4):
    """A local webdataset shard set as timm reads it: .tar shards of key.jpg + key.cls, and _info.json."""
    root.mkdir(parents=True)
    info = {"name": "tiny", "classes": [f"c{c}" for c in range(classes)], "splits": {}}
    i = 0
    for split, n, shards in per_split:
        names = [f"{split}-{s:04d}.tar" for s in range(shards)]
        for s, name in enumerate(names):
            with tarfile.open(root / name, "w") as tar:
                for j in range(n // shards):
                    img, label = root / "tmp.jpg", (s * n // shards + j) % classes
                    photo(i, size=(24, 18)).save(img)
                    tar.add(img, f"{i:06d}.jpg")
                    (root / "tmp.cls").write_text(str(label))
                    tar.add(root / "tmp.cls", f"{i:06d}.cls")
                    i += 1
        info["splits"][split] = {"name": split, "num_samples": n, "filenames": names,
                                 "shard_lengths": [n // shards] * shards}
    (root / "tmp.jpg").unlink()
    (root / "tmp.cls").unlink()
    (root / "_info.json").write_text(json.dumps(info))
    return root


@pytest.mark.slow
def test_a_webdataset_shard_set_and_both_image_folder_paths_train_with_augmentation(workdir):
    write_shards(workdir / "wds")
    image_folder(workdir / "imgs", per_class=16)
    augment = ["--hflip=0.5", "--scale=0.5,1", "--aa=rand-m9-mstd0.5", "--reprob=0.25", "--mixup=0.8", "--cutmix=1"]
    common = ["--img_size=16", "--batch_size=16", "--epochs=1", "--wandb_mode=disabled", "--workers=1"]
    argvs = {"wds": ["--dataset=wds", f"--data_dir={workdir / 'wds'}"],
             "memory": ["--dataset=imagefolder", f"--data_dir={workdir / 'imgs'}", "--data_in_memory=true", *augment],
             "stream": ["--dataset=imagefolder", f"--data_dir={workdir / 'imgs'}", "--data_in_memory=false", *augment]}
    res = train_many([[*common, *flags, f"--output_dir={name}"] for name, flags in argvs.items()], workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in argvs:
        config, summary = json.loads((workdir / name / "config.json").read_text()), summary_of(workdir / name)
        assert summary["status"] == "finished" and 0 <= summary["test/acc"] <= 1, name
        assert config["data_path"] == ("memory" if name == "memory" else "stream"), name
    assert json.loads((workdir / "wds/config.json").read_text())["train_size"] == 96
    assert summary_of(workdir / "wds")["examples"] == 96  # 6 batches of 16: every training image once
    assert json.loads((workdir / "memory/config.json").read_text())["augmentation"] == (
        "hflip 0.5, scale (0.5, 1.0), aa rand-m9-mstd0.5, reprob 0.25, mixup 0.8, cutmix 1.0")
    assert "data: streamed by 1 workers: --data_in_memory false" in res.stdout


def test_randaugment_at_its_top_magnitude_posterizes_to_black_on_both_paths():
    # An `inc1` spec at magnitude 10 asks Pillow to keep 0 bits of each pixel, which Pillow 13 refuses with a
    # ValueError (timm's own op): rand-m9-mstd0.5-inc1, the README's example, met it in its first epoch.
    args = train.parse_args(["--aa=rand-m10-mstd0-inc1", "--img_size=16"])
    stream = data.stream_transforms(args, (0.5,) * 3, (0.25,) * 3, 3)[0].transforms[1].transforms[0]
    image = Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    for randaugment in (data.aa_transform(args.aa, 16, (0.5,) * 3), stream):  # in memory, streaming
        [op] = [op for op in randaugment.ops if op.name == "PosterizeIncreasing"]
        op.prob = 1.0
        assert np.asarray(op(image)).max() == 0  # every bit dropped: black, as TensorFlow's RandAugment gives
        op.magnitude = 5
        assert np.asarray(op(image)).max() > 0  # 2 of 8 bits kept


def test_augmentation_is_off_by_default_and_on_the_device_when_asked():
    assert data.augmentation(train.parse_args([])) == ""
    args = train.parse_args(["--hflip=1", "--scale=0.25,0.25", "--img_size=16"])
    augment = data.DeviceAugment(args, (0.5,), (0.25,), torch.device("cpu"))
    x = torch.arange(2 * 8 * 8, dtype=torch.float).view(2, 1, 8, 8)
    torch.manual_seed(0)
    out = augment.geometry(x, 16)
    assert out.shape == (2, 1, 16, 16)
    # a quarter of the area, upsampled 4x in area, and flipped: each row now falls from right to left
    assert (out[:, :, :, 0] > out[:, :, :, -1]).all()
    assert out.max() < x.max() or out.min() > x.min()  # a crop, not the whole image


@pytest.mark.slow
def test_an_unreadable_image_mid_stream_fails_then_resumes_after_the_fix(workdir):
    for split, per_class in (("train", 24), ("val", 4), ("test", 4)):
        image_folder(workdir / "imgs" / split, per_class=per_class)
    bad = workdir / "imgs/train/class_2/5.png"
    good = bad.read_bytes()
    bad.write_bytes(good[:40])  # cut short: PIL reads the header, then fails
    argv = [str(ROOT / "train.py"), "--dataset=imagefolder", f"--data_dir={workdir / 'imgs'}", "--img_size=16",
            "--batch_size=8", "--epochs=2", "--data_in_memory=false", "--workers=1", "--output_dir=out"]
    first = run(argv, workdir, env=clean_env(HOME=str(workdir)))
    assert first.returncode == 2, first.stderr[-2000:]
    [line] = [line for line in first.stderr.splitlines() if line.startswith("train.py: error:")]
    assert f"cannot read image {bad}" in line and "run the same command to resume" in line
    assert "Traceback" not in first.stderr
    s = summary_of(workdir / "out")
    assert s["status"] == "failed" and s["update"] == s["stop/step"] < 12  # a whole update, before the end
    assert (workdir / "out/checkpoint/progress.json").exists()
    [wandb_dir] = (workdir / "wandb").glob("offline-run-*")
    assert inspect_wandb(wandb_dir)["summary"]["status"] == "failed"

    bad.write_bytes(good)  # fixed: the same command resumes
    second = run(argv, workdir, env=clean_env(HOME=str(workdir)))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming" in second.stdout
    s = summary_of(workdir / "out")
    assert s["status"] == "finished" and s["update"] == 24 and s["examples"] == 192  # 2 epochs of 96
    assert not (workdir / "out/checkpoint").exists()


def test_loader_workers_of_several_ranks_start_from_a_forkserver_holding_torch_before_python_3_12():
    # CPython before 3.12 can deadlock a forked child (python/cpython#112275); a 2-rank streaming run hung so here
    assert data.worker_context(1, 2) is None and data.worker_context(2, 0) is None  # one process, or no workers
    context = data.worker_context(2, 1)
    if context is None:
        assert sys.version_info >= (3, 12)
        return
    assert context.get_start_method() == "forkserver"
    # and a worker finds torch and timm imported by the forkserver: it does not import them again (seconds)
    found = context.SimpleQueue()
    worker = context.Process(target=exec, args=("import sys; found.put([m for m in ('torch', 'timm') if m in "
                                                "sys.modules])", {"found": found}))
    worker.start()
    assert found.get() == ["torch", "timm"]
    worker.join()


def test_a_webdataset_shard_set_of_several_ranks_is_read_by_workers_from_that_start(tmp_path):
    # timm's reader makes its epoch counter in the fork context; a forkserver's worker could not be sent it
    write_shards(tmp_path / "wds")
    args = train.parse_args(["--dataset=wds", f"--data_dir={tmp_path / 'wds'}", "--img_size=16", "--batch_size=8",
                             "--workers=1"])
    loaders = data.load_data(args).loaders(args, {"mean": (0.5,) * 3, "std": (0.5,) * 3}, torch.device("cpu"), 2)
    start = data.worker_context(2, 1)
    assert all(dl.multiprocessing_context is start for dl in loaders)
    train_dl = loaders[0]
    for epoch in (0, 1):
        train_dl.dataset.set_epoch(epoch)  # shards shuffled by epoch, in the workers
        images, labels = next(iter(train_dl))
        assert images.shape == (8, 3, 16, 16) and labels.shape == (8,)


@pytest.mark.slow
def test_two_ranks_stream_each_its_own_part_into_one_wandb_run(workdir):
    image_folder(workdir / "imgs", per_class=40)  # 160 images: 112 train
    res = run(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2", "--num_machines=1",
               "--mixed_precision=no", "--dynamo_backend=no", str(ROOT / "train.py"), "--dataset=imagefolder",
               f"--data_dir={workdir / 'imgs'}", "--img_size=16", "--batch_size=8", "--epochs=1",
               "--data_in_memory=false", "--workers=1", "--hflip=0.5", "--output_dir=out"],
              cwd=workdir, env=clean_env(HOME=str(workdir)))
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("data: streamed by 1 workers") == 1
    s = summary_of(workdir / "out")
    assert s["data/samples_per_rank"] == [56, 56]  # 7 batches of 8 each: half of the 112 training images
    [wandb_dir] = (workdir / "wandb").glob("offline-run-*")
    recorded = inspect_wandb(wandb_dir)
    assert recorded["config"]["num_processes"] == 2 and recorded["config"]["data_path"] == "stream"


@pytest.mark.slow
def test_two_ranks_stream_a_webdataset_shard_set_with_workers(workdir):
    write_shards(workdir / "wds")
    res = run(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2", "--num_machines=1",
               "--mixed_precision=no", "--dynamo_backend=no", str(ROOT / "train.py"), "--dataset=wds",
               f"--data_dir={workdir / 'wds'}", "--img_size=16", "--batch_size=8", "--epochs=1", "--workers=1",
               "--wandb_mode=disabled", "--output_dir=out"], cwd=workdir, env=clean_env(HOME=str(workdir)))
    assert res.returncode == 0, res.stderr[-3000:]
    s = summary_of(workdir / "out")
    assert s["status"] == "finished" and len(s["data/samples_per_rank"]) == 2 and min(s["data/samples_per_rank"]) > 0


BAD_DATA = [
    (["--aa=bogus"], "--aa 'bogus' is not a timm augmentation spec"),
    (["--mixup=0.8", "--batch_size=33"], "use an even --batch_size"),
    (["--scale=2,1"], "--scale: invalid pair value"),
    (["--dataset=wds", "--data_dir=."], "--dataset wds reads _info.json"),
    (["--dataset=imagefolder", "--data_dir=splits_without_train"], "has split folder(s) Val/ but no train/"),
    (["--dataset=imagefolder", "--data_dir=one_class"], "has one class folder (cat); a classifier needs two"),
    (["--dataset=imagefolder", "--data_dir=splits_without_train/Val", "--cache_dir=a_file/cache"],
     "--cache_dir a_file/cache: a_file is a file"),
]


@pytest.mark.parametrize("argv, words", BAD_DATA, ids=[" ".join(a) for a, _ in BAD_DATA])
def test_bad_data_flags_are_one_line_exit_2_and_write_nothing(workdir, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(workdir)
    image_folder(workdir / "splits_without_train" / "Val", classes=2, per_class=2)
    image_folder(workdir / "one_class", classes=1, per_class=8)
    (workdir / "one_class" / "class_0").rename(workdir / "one_class" / "cat")
    (workdir / "a_file").write_text("")
    before = sorted(p.name for p in workdir.iterdir())
    with pytest.raises(SystemExit) as exit:
        train.main(["--output_dir=out", "--wandb_mode=offline", *argv])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith("train.py: error: ") and err.count("\n") == 1, err
    assert words in err
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_a_bad_image_decoded_for_memory_names_the_file_and_leaves_no_cache(tmp_path):
    folder = image_folder(tmp_path / "imgs", per_class=20)  # 80 files: decoded by worker processes
    (folder / "class_3" / "7.png").write_bytes(b"not an image")
    cache = tmp_path / "new" / "cache"
    with pytest.raises(data.BadData, match=r"^cannot read image .*class_3/7\.png \(UnidentifiedImageError\); fix or "
                                           r"remove the file$"):
        data.load_data(args_for(folder, "--data_in_memory=true", f"--cache_dir={cache}"))
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_decoding_is_once_per_sweep_not_per_run(workdir):
    folder = image_folder(workdir / "imgs", per_class=16)
    common = ["--dataset=imagefolder", f"--data_dir={folder}", "--img_size=16", "--batch_size=16", "--epochs=1",
              "--max_updates=1", "--wandb_mode=disabled"]
    res = train_many([[*common, f"--seed={seed}", f"--output_dir=s{seed}"] for seed in range(2)], workdir)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith("data: in memory")]
    assert len(lines) == 2 and "decoded into the cache" in lines[0] and "read from the decoded cache" in lines[1]
