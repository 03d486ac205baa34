"""train.py's measuring instruments, beyond loss and accuracy: ghost batch norm (Hoffer et al. 2017), sharpness
(the top eigenvalue of the training loss's Hessian, by power iteration on Hessian-vector products), and accuracy on
the kept and the changed labels of a training split with label noise. They need torch only; train.py and
lab1/interpolate.py call them.
"""

import math

import torch
import torch.nn.functional as F

from data import ConfigError

# ----------------------------------------------------------------------------------------------
# Ghost batch norm

class GhostBatchNorm2d(torch.nn.BatchNorm2d):
    """Ghost batch norm (Hoffer et al. 2017): in training, each group of `ghost_size` consecutive images of a batch
    is normalised with its own mean and variance, so the statistics no longer depend on the batch size. The running
    statistics move once a batch, as nn.BatchNorm2d's do, towards the groups' mean of means and mean of unbiased
    variances (momentum None: the cumulative average precise BN uses); evaluation and the state dict are
    nn.BatchNorm2d's."""

    ghost_size = 0

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        count = self.ghost_size * x[0, 0].numel()  # values per channel in one group
        if x.shape[0] % self.ghost_size or count == 1:  # as nn.BatchNorm2d: one value has no variance
            raise ValueError(f"batch of {tuple(x.shape)} in ghost groups of {self.ghost_size}: need whole groups "
                             "and more than 1 value per channel")
        groups = x.reshape(-1, self.ghost_size, *x.shape[1:])  # (n, G, C, H, W): n ghost groups of G images
        var, mean = torch.var_mean(groups, dim=(1, 3, 4), correction=0, keepdim=True)
        y = (groups - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.view(1, 1, -1, 1, 1) + self.bias.view(1, 1, -1, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.mean(0).flatten(), factor)
                self.running_var.lerp_(var.mean(0).flatten() * count / (count - 1), factor)
        return y.reshape(x.shape)


def use_ghost_batch_norm(model, size, name):
    """Every nn.BatchNorm2d of the model becomes a GhostBatchNorm2d in place (same weights and buffers)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    other = sorted({type(m).__name__ for m in norms if type(m) is not torch.nn.BatchNorm2d})
    if not norms or other:
        raise ConfigError(f"--ghost_batch_size replaces torch.nn.BatchNorm2d layers, and {name} has "
                          f"{', '.join(other) if other else 'no batch norm'}; drop --ghost_batch_size")
    for m in norms:
        m.__class__, m.ghost_size = GhostBatchNorm2d, size


# ----------------------------------------------------------------------------------------------
# Sharpness

def power_iteration(matvec, start, iters, tol):
    """The eigenvalue of largest magnitude of a symmetric linear map (a list of tensors to a list of tensors), from
    the vector `start`: Rayleigh quotients until two agree within tol (relative), or after iters products."""
    v, estimate = start, math.nan
    for _ in range(iters):
        norm = torch.sqrt(sum((a * a).sum() for a in v))
        v = [a / norm for a in v]
        mv = matvec(v)
        new = sum((a * b).sum() for a, b in zip(mv, v, strict=True)).item()
        if abs(new - estimate) <= tol * abs(new) or not math.isfinite(new):  # settled, or a diverged model's NaN
            return new
        estimate, v = new, mv
    return estimate


def top_eigenvalue(hvp, start, iters, tol=1e-3):
    """The largest (most positive) eigenvalue of a symmetric map such as a Hessian: power iteration, and if the
    largest in magnitude is negative (far from a minimum), power iteration again on the map shifted by it, whose
    top eigenvalue then dominates. Each pass takes at most iters products."""
    top = power_iteration(hvp, start, iters, tol)
    if top < 0:
        shifted = power_iteration(lambda v: [a - top * b for a, b in zip(hvp(v), v, strict=True)], start, iters, tol)
        top += shifted
    return top


def sharpness(model, x, y, iters, seed, label_smoothing=0.0):
    """The top eigenvalue of the Hessian of the training loss on the batch (x, y) with respect to the weights (no
    weight decay), by power iteration on Hessian-vector products (double backward), from a random start fixed by
    seed. In train mode, as SGD sees the loss: batch norm normalises with the statistics of x (in ghost groups if
    set). The running statistics, the mode and the global RNG are restored, so training goes on bit for bit."""
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = [b.clone() for b in model.buffers()]
    was_training = model.training
    generator = torch.Generator(x.device).manual_seed(seed)
    start = [torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype) for p in params]
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            loss = F.cross_entropy(model.train()(x), y, label_smoothing=label_smoothing)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            return top_eigenvalue(lambda v: torch.autograd.grad(grads, params, v, retain_graph=True), start, iters)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers, strict=True):
                buffer.copy_(saved)


def sharpness_images(train_set, n, seed, device):
    """The n training images (and labels) sharpness is measured on, on device: the same for every point of a run.
    train_set: in memory, data.TensorImages (a batch in one call); streamed, images one at a time."""
    pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    x, y = (train_set.__getitems__(pick) if hasattr(train_set, "__getitems__") else
            torch.utils.data.default_collate([train_set[i] for i in pick]))
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------------------------------
# Memorisation of noisy labels

def label_noise_accuracy(pred, labels, true_labels):
    """Evaluation-mode predictions of the training images -> accuracy on those whose label was kept (clean) and
    on those relabelled (noisy), both against the labels trained on (so acc_noisy is memorisation of the wrong
    labels), and on the relabelled against their true labels."""
    changed, right = labels != true_labels, pred == labels
    return {"train/acc_clean": right[~changed].float().mean().item(),
            "train/acc_noisy": right[changed].float().mean().item(),
            "train/acc_noisy_true": (pred == true_labels)[changed].float().mean().item()}
