"""AdaBN (Li et al. 2016): batch-norm statistics re-estimated on the target domain.

A network trained on the source domain keeps its weights; only the running mean
and variance of every batch-norm layer are replaced by the target domain's, which
is all the adaptation there is. The statistics are the cumulative average of the
per-batch statistics over one pass of the target images (batch norm with
momentum None), computed with every other layer in inference mode (no dropout).
"""

from __future__ import annotations

from collections.abc import Generator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset

from atl_desktop.jobs import Progress


def batch_norm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def reestimate_batch_norm(
    model: nn.Module, images: Dataset, *, batch_size: int = 128, device: str | torch.device = "cpu"
) -> Generator[Progress, None, None]:
    """Replace the running statistics of every batch-norm layer by those of `images`.

    `images` yields (image, ...) items; labels, if any, are ignored. Closing the job
    early restores the previous statistics, so the model is never half-adapted.
    """
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError("the model has no batch-norm layers: AdaBN does not apply")
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in layers]
    was_training = model.training
    loader = DataLoader(images, batch_size=batch_size, shuffle=False)
    done = False
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        with torch.no_grad():
            for i, batch in enumerate(loader):
                x = batch[0] if isinstance(batch, list | tuple) else batch
                model(x.to(device))
                yield Progress(i + 1, len(loader), "re-estimating batch-norm statistics")
        done = True
    finally:
        for m, (momentum, mean, var, tracked) in zip(layers, saved, strict=True):
            m.momentum = momentum
            if not done:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)
