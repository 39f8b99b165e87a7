"""One optimiser step, knowing nothing of the run: forward, loss, backward, clip, update
(`train_step`), and the diagnostics on a batch (`probe_losses`). engine/train.py sets up the
run around it; the demo and bench/train.py call it directly.

Steps count batches: a step whose loss (on any process) or gradient norm is not finite makes
no update, and says which of the two it was (`StepResult`). It leaves the model as it found it:
its forwards also moved BatchNorm's running statistics (NaN ones, when the forward diverged),
and those are put back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from timecycle.engine import distributed
from timecycle.engine.distributed import World
from timecycle.engine.logging import TERMS
from timecycle.losses import LossConfig, total_loss


@dataclass
class StepResult:
    """One step's detached scalars (None when the step was skipped as non-finite)."""

    values: dict[str, torch.Tensor] | None
    loss: torch.Tensor
    grad_norm: torch.Tensor | None = None  # set when skipped: was it the loss or the gradient


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               batches: dict | list[dict], loss_config: LossConfig, grad_clip: float,
               device: torch.device, amp_dtype: torch.dtype | None = None,
               world: World | None = None) -> StepResult:
    """Forward, loss, backward on each micro-batch, then clip and update once.

    batches: one batch or a list of micro-batches whose gradients accumulate (each loss
        scaled by 1 / len). A batch: frames (B, K+1, 3, S, S), patch (B, 3, P, P), theta_gt
        (B, 2, 3) (`ClipDataset`).
    model: the TimeCycle, or its DistributedDataParallel wrapper: gradients are then
        all-reduced once, in the last micro-batch's backward (no_sync before), and the
        reported values are averaged over `world`'s processes.
    Returns the total loss, each term reduced over its K steps (means over micro-batches and
    processes), and the gradient norm before clipping; `values` is None and no update is made
    when the loss of any process or the gradient norm is not finite. The backward runs even
    then, so that every process joins the gradient all-reduce; the BatchNorm running
    statistics that the step's forwards moved are put back (`running_statistics`), so a
    skipped step changes nothing. One device sync per step.
    """
    batches = [batches] if isinstance(batches, dict) else list(batches)
    ddp = isinstance(model, DistributedDataParallel)
    statistics = running_statistics(model)
    saved = _snapshot(statistics)
    optimizer.zero_grad(set_to_none=True)
    sums, names = None, None
    for i, batch in enumerate(batches):
        sync = not ddp or i == len(batches) - 1
        with contextlib.nullcontext() if sync else model.no_sync():
            loss, terms = objective_loss(model, batch, loss_config, device, amp_dtype)
            (loss / len(batches)).backward()
        names = list(terms)
        values = torch.stack([loss.detach(), *(terms[k].detach() for k in names)])
        sums = values if sums is None else sums + values
    means = distributed.mean_across(sums / len(batches), world or World())
    params = [p for p in model.parameters() if p.grad is not None]
    # grad_clip 0: not clipped (CRW); the norm is still measured and logged.
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    if not bool(torch.isfinite(means[0]) & torch.isfinite(grad_norm)):
        # Every process decides alike (the loss averaged, the gradients all-reduced), so each
        # puts back its own statistics: replicas equal before the step stay equal.
        optimizer.zero_grad(set_to_none=True)
        _restore(statistics, saved)
        return StepResult(None, means[0], grad_norm.detach())
    optimizer.step()
    return StepResult({"loss": means[0], "grad_norm": grad_norm.detach(),
                       **dict(zip(names, means[1:]))}, means[0])


def objective_loss(model: torch.nn.Module, batch: dict, loss_config: LossConfig | None,
                   device: torch.device, amp_dtype: torch.dtype | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch's loss and its logged terms (scalars, the loss's graph kept).

    A TimeCycle batch (frames, patch, theta_gt) is weighted by `loss_config`, each term reduced
    over its K steps as the preset says; a walk batch (patches, objective "crw") gives the mean
    cross-entropy over the palindrome lengths, with "walk_xent" and "walk_acc" logged.
    """
    # contiguous(): one memory layout whatever made the batch. Collated in the main process,
    # frames keep to_tensor's channels-last strides; from DataLoader workers they arrive
    # contiguous; the two layouts pick different kernels (different rounding).
    def get(key: str) -> torch.Tensor:
        return batch[key].to(device, non_blocking=True).contiguous()

    with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
        if "patches" in batch:
            out = model(get("patches"))
        else:
            out = model(get("frames"), get("patch"), get("theta_gt"))
    if "patches" in batch:
        xent = out["xent"].float().mean()
        return xent, {"walk_xent": xent, "walk_acc": out["acc"].float().mean()}
    reduce = torch.sum if loss_config.step_reduction == "sum" else torch.mean
    terms = {k: out[k].float() for k in TERMS}
    return total_loss(terms, loss_config), {k: reduce(terms[k]) for k in TERMS}


def unrelated(batch: dict) -> dict:
    """The batch with each clip's frames taken from other clips: frame t of clip b from clip
    (b + t) % B for a walk; for TimeCycle the target and its patch stay and past frame t comes
    from clip (b + t + 1) % B. No two frames of a clip then share a video when B >= the clip's
    frames and the batch's videos differ.
    A model whose cycles close as well on these as on real clips has learned position, not
    correspondence (the diagnostic of `probe_losses`)."""
    key = "patches" if "patches" in batch else "frames"
    x = batch[key]
    b, t = x.shape[:2]
    walk = key == "patches"
    order = (torch.arange(b)[:, None] + torch.arange(t)[None, :] + (0 if walk else 1)) % b
    if not walk:
        order[:, -1] = torch.arange(b)  # the target, whose patch and theta_gt are the clip's
    mixed = x[order, torch.arange(t)[None, :]]
    return {**batch, key: mixed}


def running_statistics(model: torch.nn.Module) -> list[torch.Tensor]:
    """The buffers a forward of `model` updates in place: running_mean, running_var and
    num_batches_tracked of each BatchNorm in train mode (SyncBatchNorm included; none of one
    in eval mode, as with --batchnorm frozen, which reads them only)."""
    return [b for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and m.training and m.track_running_stats
            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]


def _snapshot(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    # One fused copy per device and dtype rather than a clone per tensor (45 in the small preset):
    # it runs on every step, for the rare one that is skipped.
    saved = [torch.empty_like(t) for t in tensors]
    if tensors:
        torch._foreach_copy_(saved, tensors)
    return saved


@torch.no_grad()
def _restore(tensors: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    if tensors:
        torch._foreach_copy_(tensors, saved)


@contextlib.contextmanager
def _frozen_statistics(model: torch.nn.Module):
    """BatchNorm keeps normalising with batch statistics, and its running ones are put back
    afterwards, so a diagnostic forward leaves the model as it was. (Momentum 0 would not do:
    a NaN batch statistic times 0 is still NaN, and the probe runs on the step's last batch,
    which may be the one that made the step non-finite.)"""
    statistics = running_statistics(model)
    saved = _snapshot(statistics)
    try:
        yield
    finally:
        _restore(statistics, saved)


@torch.no_grad()
def probe_losses(model: torch.nn.Module, batch: dict, loss_config: LossConfig | None,
                 device: torch.device, amp_dtype: torch.dtype | None = None
                 ) -> dict[str, float]:
    """The objective's loss on `batch` as it is ("probe_real") and with its frames from
    unrelated clips ("probe_unrelated"), no update made. The gap between the two is what the
    model has learned about correspondence; near zero, the cycles close by position."""
    with _frozen_statistics(model):
        real, _ = objective_loss(model, batch, loss_config, device, amp_dtype)
        mixed, _ = objective_loss(model, unrelated(batch), loss_config, device, amp_dtype)
    return {"probe_real": float(real), "probe_unrelated": float(mixed)}


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """Every BatchNorm of `model` in eval mode: it normalises with its running statistics and
    no longer updates them (its affine weight and bias still learn)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
