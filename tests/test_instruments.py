"""train.py's instruments against known answers: ghost batch norm, sharpness (the Hessian's top eigenvalue),
accuracy on the clean and the relabelled training images, and lab1/interpolate.py's line between two models."""

import csv
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import ROOT, TINY, inspect_wandb, run, summary_of, train_many

sys.path.insert(0, str(ROOT))
import data  # noqa: E402
import instruments  # noqa: E402
import runfiles  # noqa: E402
import train  # noqa: E402


def ghost(bn, size):
    """A copy of an nn.BatchNorm2d as train.py's ghost batch norm makes it."""
    net = torch.nn.Sequential(bn)
    instruments.use_ghost_batch_norm(net, size, "test")
    return net[0]


def batch_norm(channels=3, seed=0):
    """nn.BatchNorm2d with a random affine transform and running statistics, so none of them is trivially 0 or 1."""
    torch.manual_seed(seed)
    bn = torch.nn.BatchNorm2d(channels)
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.normal_()
        bn.running_var.uniform_(0.5, 2)
    return bn


def clone(bn):
    out = torch.nn.BatchNorm2d(bn.num_features, momentum=bn.momentum)
    out.load_state_dict(bn.state_dict())
    return out


# ----------------------------------------------------------------------------------------------
# Ghost batch norm

def test_ghost_batch_norm_over_the_whole_batch_is_batch_norm():
    plain = batch_norm()
    gbn = ghost(clone(plain), 8)
    x = torch.randn(8, 3, 5, 5, requires_grad=True)
    for _ in range(2):  # two steps: the running statistics move the same way
        y_plain, y_ghost = plain(x), gbn(x)
        torch.testing.assert_close(y_ghost, y_plain)
        grads = [torch.autograd.grad((y * torch.arange(y.numel()).view_as(y)).sum(), (x, m.weight))
                 for y, m in ((y_plain, plain), (y_ghost, gbn))]
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(gbn, name), getattr(plain, name))
    gbn.load_state_dict(plain.state_dict())  # the same statistics (the lines above agree to rounding)
    plain.eval(), gbn.eval()
    assert torch.equal(gbn(x), plain(x))  # evaluation is nn.BatchNorm2d's own
    assert list(gbn.state_dict()) == list(plain.state_dict())  # model.safetensors keeps its keys


def test_ghost_batch_norm_normalises_each_group_by_its_own_statistics():
    bn = batch_norm(channels=2)
    start_mean, start_var = bn.running_mean.clone(), bn.running_var.clone()
    gbn = ghost(clone(bn), 4)
    x = torch.randn(12, 2, 3, 3) * 3 + 1
    y = gbn(x)
    means, variances = [], []
    for g in range(3):  # by hand: each group of 4 images, over its images and pixels, per channel
        group = x[4 * g:4 * g + 4]
        mean = group.mean(dim=(0, 2, 3))
        var = ((group - mean.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))  # biased, as batch norm normalises
        expected = (group - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps)
        expected = expected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(y[4 * g:4 * g + 4], expected)
        means.append(mean)
        variances.append(var * 36 / 35)  # unbiased over the group's 4 x 3 x 3 values, as nn.BatchNorm2d keeps
    # the running statistics move once, by momentum 0.1, towards the groups' mean statistics
    torch.testing.assert_close(gbn.running_mean, 0.9 * start_mean + 0.1 * torch.stack(means).mean(0))
    torch.testing.assert_close(gbn.running_var, 0.9 * start_var + 0.1 * torch.stack(variances).mean(0))
    assert gbn.num_batches_tracked.item() == 1
    # not what batch norm over all 12 images gives
    assert not torch.allclose(y, clone(bn)(x), atol=1e-3)

    # precise BN (update_bn: momentum None, a cumulative average) over two batches of 8, in groups of 4
    batches = [torch.randn(8, 2, 3, 3) + i for i in range(2)]
    model = torch.nn.Sequential(gbn)
    torch.optim.swa_utils.update_bn(batches, model)
    groups = [b[i:i + 4] for b in batches for i in (0, 4)]
    torch.testing.assert_close(gbn.running_mean, torch.stack([g.mean(dim=(0, 2, 3)) for g in groups]).mean(0))
    torch.testing.assert_close(gbn.running_var, torch.stack([g.var(dim=(0, 2, 3)) for g in groups]).mean(0))
    assert gbn.momentum == 0.1  # update_bn gives the momentum back


def test_ghost_batch_size_must_divide_the_batch(workdir, capsys):
    with pytest.raises(SystemExit) as stop:
        train.main(["--batch_size=32", "--ghost_batch_size=12", "--output_dir=out"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "--ghost_batch_size 12 does not divide" in err
    assert "--batch_size 32" in err and not (workdir / "out").exists()
    with pytest.raises(train.ConfigError, match="multiple of --ghost_batch_size 16"):
        train.parse_args(["--batch_size=32", "--ghost_batch_size=16", "--sharpness_every=1",
                          "--sharpness_samples=40"])
    with pytest.raises(train.ConfigError, match="has no batch norm"):  # GroupNorm: nothing to make ghost
        train.create_model(train.parse_args(["--ghost_batch_size=8", "--model_kwargs=norm_layer=groupnorm1"]), 10, 1)


# ----------------------------------------------------------------------------------------------
# Sharpness: power iteration on Hessian-vector products

def quadratic(eigenvalues, seed=0):
    """Hessian-vector products of f(w) = w'Aw/2, whose Hessian is A = Q diag(eigenvalues) Q' everywhere, by double
    backward as train.py's sharpness takes them; and a count of the products."""
    torch.manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    w = torch.randn(n, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(0.5 * w @ a @ w, w, create_graph=True)
    products = []

    def hvp(v):
        products.append(1)
        return list(torch.autograd.grad(grad, w, v, retain_graph=True))

    return hvp, products, [torch.randn(n, dtype=torch.float64)]


def test_power_iteration_finds_the_top_eigenvalue_of_a_quadratic():
    hvp, products, start = quadratic([7.0, 3.0, 1.0, 0.5, -2.0, 0.0])
    assert instruments.top_eigenvalue(hvp, start, iters=200, tol=1e-10) == pytest.approx(7.0, rel=1e-8)
    assert len(products) < 200  # it stopped when the estimate settled
    # iters caps the products; the estimate is then the last Rayleigh quotient, below the top
    products.clear()
    low = instruments.top_eigenvalue(hvp, start, iters=2, tol=0)
    assert len(products) == 2 and -2 < low < 7


def test_top_eigenvalue_is_the_most_positive_even_when_a_negative_one_is_larger():
    hvp, products, start = quadratic([3.0, 1.0, 0.2, -7.0], seed=1)
    assert instruments.power_iteration(hvp, start, iters=500, tol=1e-12) == pytest.approx(-7.0, rel=1e-8)
    assert instruments.top_eigenvalue(hvp, start, iters=500, tol=1e-12) == pytest.approx(3.0, rel=1e-6)


def test_sharpness_of_a_linear_classifier_is_its_hessian_top_eigenvalue():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3), torch.nn.BatchNorm1d(3))
    model.eval()
    x, y = torch.randn(16, 2, 2, 2), torch.randint(0, 3, (16,))
    buffers = [b.clone() for b in model.buffers()]
    params = dict(model.named_parameters())

    def loss(flat):  # the loss as a function of all weights, in train mode (batch statistics of x)
        split = dict(zip(params, flat.split([p.numel() for p in params.values()]), strict=True))
        weights = {k: v.view_as(params[k]) for k, v in split.items()}
        with torch.nn.utils.stateless._reparametrize_module(model, weights):
            return F.cross_entropy(model.train()(x), y)

    hessian = torch.autograd.functional.hessian(loss, torch.cat([p.detach().flatten() for p in params.values()]))
    top = torch.linalg.eigvalsh(hessian.double()).abs().max().item()
    model.eval()
    for b, saved in zip(model.buffers(), buffers, strict=True):  # the hessian's forward passes moved them
        b.copy_(saved)
    rng = torch.get_rng_state()
    assert instruments.sharpness(model, x, y, iters=500, seed=0) == pytest.approx(top, rel=1e-3)
    assert not model.training  # as it was
    assert all(torch.equal(b, saved) for b, saved in zip(model.buffers(), buffers, strict=True))
    assert torch.equal(torch.get_rng_state(), rng)


def test_label_noise_accuracy_counts_kept_and_changed_labels_apart():
    true = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    labels = torch.tensor([0, 1, 2, 3, 9, 9, 9, 9])  # the last 4 relabelled
    pred = torch.tensor([0, 1, 2, 0, 9, 9, 6, 0])
    assert instruments.label_noise_accuracy(pred, labels, true) == {
        "train/acc_clean": 0.75, "train/acc_noisy": 0.5, "train/acc_noisy_true": 0.25}


# ----------------------------------------------------------------------------------------------
# In real runs

def history(out):
    return runfiles.read_history(out / runfiles.HISTORY)


def weights(out):
    return load_file(out / "model.safetensors")


@pytest.mark.slow
def test_sharpness_and_memorisation_in_a_run_leave_its_training_bit_for_bit(workdir):
    sharp = ["--sharpness_every=1", "--sharpness_samples=32", "--sharpness_iters=2"]
    noisy = [*TINY, "--label_noise=0.25"]  # 32 of the 128 training labels changed
    res = train_many([[*noisy, *sharp, "--output_dir=sharp"],  # W&B offline, read back below
                      [*noisy, "--wandb_mode=disabled", "--output_dir=plain"],
                      [*TINY, "--epochs=1", "--ghost_batch_size=8", "--precise_bn", *sharp, "--num_threads=1",
                       "--wandb_mode=disabled", "--output_dir=ghost"],
                      [*noisy, *sharp, "--epochs=1", "--data_in_memory=false", "--workers=1", "--wandb_mode=disabled",
                       "--output_dir=stream"]], workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    sharp, plain, ghost_run, stream = (history(workdir / name) for name in ("sharp", "plain", "ghost", "stream"))

    # measured at both points, and the training, evaluation and weights are the same as without it
    assert len(sharp) == 2 and all(0 < r["sharpness/top_eig"] < math.inf for r in sharp)
    assert [{k: v for k, v in r.items() if k not in ("sharpness/top_eig", "time/train_s", "throughput/train_img_s")}
            for r in sharp] == [{k: v for k, v in r.items() if k not in ("time/train_s", "throughput/train_img_s")}
                                for r in plain]
    ends = weights(workdir / "sharp"), weights(workdir / "plain")
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[1])  # running statistics included
    s, p = summary_of(workdir / "sharp"), summary_of(workdir / "plain")
    assert (s["test/loss"], s["test/acc"]) == (p["test/loss"], p["test/acc"])
    assert s["time/sharpness_s"] > 0 and p["time/sharpness_s"] == 0 and "sharpness/top_eig" not in plain[0]
    assert s["sharpness/top_eig"] == sharp[-1]["sharpness/top_eig"] and "sharpness/top_eig" not in p  # the last
    assert p["train/acc_noisy"] == plain[-1]["train/acc_noisy"]
    recorded = inspect_wandb(s["wandb_run_dir"])["summary"]
    assert recorded["sharpness/top_eig"] == pytest.approx(sharp[-1]["sharpness/top_eig"])
    assert recorded["train/acc_noisy"] == pytest.approx(sharp[-1]["train/acc_noisy"])

    # memorisation, recomputed from the saved model (the lowest-val/loss point's weights and statistics)
    import timm
    args = train.parse_args(noisy)
    loaded = data.load_data(args)
    model = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    model.load_state_dict(ends[0])
    bn = loaded.loaders(args, timm.data.resolve_model_data_config(model), torch.device("cpu"), 1)[3]
    x, labels = bn.dataset.__getitems__(range(len(bn.dataset)))  # the training images without augmentation
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    true = torch.as_tensor(loaded.splits["train_true_labels"])
    changed = labels != true
    assert changed.sum().item() == 32 == runfiles.read_json(workdir / "sharp/config.json")["label_noise_changed"]
    row = min(sharp, key=lambda r: r["val/loss"])
    assert row["train/acc_clean"] == pytest.approx((pred == labels)[~changed].float().mean().item(), abs=1e-6)
    assert row["train/acc_noisy"] == pytest.approx((pred == labels)[changed].float().mean().item(), abs=1e-6)
    assert row["train/acc_noisy_true"] == pytest.approx((pred == true)[changed].float().mean().item(), abs=1e-6)
    for r in sharp + stream:  # whole images out of 96 kept and 32 changed labels, in memory and streamed
        assert 0 < r["sharpness/top_eig"] < math.inf and 0 <= r["train/acc_noisy_true"] <= 1
        assert r["train/acc_clean"] * 96 == pytest.approx(round(r["train/acc_clean"] * 96), abs=1e-4)
        assert r["train/acc_noisy"] * 32 == pytest.approx(round(r["train/acc_noisy"] * 32), abs=1e-4)

    assert runfiles.read_json(workdir / "stream/config.json")["data_path"] == "stream"

    # ghost batch norm with precise BN and sharpness; without label noise there are no train/acc_* columns
    assert runfiles.read_json(workdir / "ghost/config.json")["num_threads"] == 1  # the count used, as asked
    assert runfiles.read_json(workdir / "plain/config.json")["num_threads"] == torch.get_num_threads()  # default
    assert summary_of(workdir / "ghost")["status"] == "finished" and 0 < ghost_run[0]["sharpness/top_eig"] < math.inf
    assert not [k for k in ghost_run[0] if k.startswith("train/acc_")]


@pytest.mark.slow
def test_interpolation_ends_reproduce_each_runs_own_evaluation(workdir):
    flags = [*TINY, "--epochs=1", "--precise_bn", "--lr=0.01", "--wandb_mode=disabled"]  # one point: the saved one
    res = train_many([[*flags, "--output_dir=a"], [*flags, "--batch_size=16", "--output_dir=b"]], workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    res = run([str(ROOT / "lab1/interpolate.py"), "a", "b", "--points=3", "--sharpness_samples=32",
               "--sharpness_iters=2", "--out=line.csv"], cwd=workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    with open(workdir / "line.csv") as f:
        rows = [{k: v if k.startswith("run_") else float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    assert [r["alpha"] for r in rows] == [0, 0.5, 1] and {r["run_a"] + r["run_b"] for r in rows} == {"ab"}
    for row, end in ((rows[0], "a"), (rows[2], "b")):
        s = summary_of(workdir / end)
        for key in ("test/loss", "test/acc"):
            assert row[key] == pytest.approx(s[key], abs=1e-6), (end, key)
        assert row["val/loss"] == pytest.approx(s["val/loss_final"], abs=1e-6)
    assert rows[1]["test/loss"] not in (rows[0]["test/loss"], rows[2]["test/loss"])
    assert all(math.isfinite(r["sharpness/top_eig"]) for r in rows)

    # another seed is another split: there is no line between the two
    (workdir / "c").mkdir()
    (workdir / "c/model.safetensors").write_bytes((workdir / "b/model.safetensors").read_bytes())
    runfiles.write_json(workdir / "c/config.json", {**runfiles.read_json(workdir / "b/config.json"), "seed": 1})
    res = run([str(ROOT / "lab1/interpolate.py"), "a", "c"], cwd=workdir)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "seed (0 vs 1)" in res.stderr
    assert not (workdir / "interpolation.csv").exists()
