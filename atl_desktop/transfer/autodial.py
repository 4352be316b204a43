"""AutoDIAL's domain-alignment layers (Carlucci et al. 2017).

A domain-alignment (DA) layer replaces a batch-norm layer. In training, a batch
holds source and target images; each domain is normalised with the moments of
a mixture of the two domains' batches, weighted alpha for its own domain and
1 - alpha for the other:

    mu_s   = alpha mu_S + (1 - alpha) mu_T
    var_s  = alpha var_S + (1 - alpha) var_T + alpha (1 - alpha) (mu_S - mu_T)^2

and symmetrically for the target. alpha, one per layer, is learned and clamped
to [0.5, 1]: alpha = 1 normalises each domain on its own (domain-specific batch
norm), alpha = 1/2 normalises both with the moments of their union (plain batch
norm over the whole batch, for equal batch sizes). At inference, images are
target images and get the target's mixed running moments. The affine scale and
shift are shared by both domains.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from atl_desktop.models.classifier import replace_module

ALPHA_RANGE = (0.5, 1.0)


class DomainAlignment(nn.Module):
    def __init__(self, bn: _BatchNorm, alpha: float = 1.0):
        super().__init__()
        low, high = ALPHA_RANGE
        if not low <= alpha <= high:
            raise ValueError(f"alpha must be in [{low}, {high}]")
        self.kind = type(bn)
        self.num_features, self.eps = bn.num_features, bn.eps
        self.momentum = 0.1 if bn.momentum is None else bn.momentum
        # The batch-norm layer's own parameters, so freezing and optimiser groups still find them.
        self.weight, self.bias = bn.weight, bn.bias
        self.alpha = nn.Parameter(torch.tensor(float(alpha), device=bn.running_mean.device))
        for domain in ("source", "target"):
            self.register_buffer(f"mean_{domain}", bn.running_mean.detach().clone())
            self.register_buffer(f"var_{domain}", bn.running_var.detach().clone())
        self.target_mask: Tensor | None = None  # set per batch by `domains`

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.training and self.target_mask is not None:
            mean, var = self._mixed_batch_moments(x, self.target_mask)
            mean, var = mean.view(len(x), *shape[1:]), var.view(len(x), *shape[1:])
        else:
            mean, var = self.target_moments()
            mean, var = mean.view(shape), var.view(shape)
        y = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def _mixed_batch_moments(self, x: Tensor, is_target: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample (N, C) mean and variance: each sample gets its own domain's mixture."""
        dims = [0, *range(2, x.dim())]
        parts = {}
        for domain, mask in (("source", ~is_target), ("target", is_target)):
            if mask.any():
                xd = x[mask]
                var, mu = torch.var_mean(xd, dims, correction=0)
                self._update_running(domain, mu, var, xd.numel() // xd.shape[1])
                parts[domain] = (mu, var)
        if len(parts) == 1:  # one domain only: plain batch statistics
            (mu, var), = parts.values()
            return mu.expand(len(x), -1), var.expand(len(x), -1)
        a = self.alpha.clamp(*ALPHA_RANGE)
        (mu_s, var_s), (mu_t, var_t) = parts["source"], parts["target"]
        gap = a * (1 - a) * (mu_s - mu_t) ** 2
        mix_s = (a * mu_s + (1 - a) * mu_t, a * var_s + (1 - a) * var_t + gap)
        mix_t = (a * mu_t + (1 - a) * mu_s, a * var_t + (1 - a) * var_s + gap)
        pick = is_target[:, None]
        return torch.where(pick, mix_t[0], mix_s[0]), torch.where(pick, mix_t[1], mix_s[1])

    @torch.no_grad()
    def _update_running(self, domain: str, mu: Tensor, var: Tensor, n: int) -> None:
        unbiased = var * n / max(1, n - 1)
        getattr(self, f"mean_{domain}").lerp_(mu.detach(), self.momentum)
        getattr(self, f"var_{domain}").lerp_(unbiased.detach(), self.momentum)

    def target_moments(self) -> tuple[Tensor, Tensor]:
        a = self.alpha.clamp(*ALPHA_RANGE)
        gap = a * (1 - a) * (self.mean_target - self.mean_source) ** 2
        return (a * self.mean_target + (1 - a) * self.mean_source,
                a * self.var_target + (1 - a) * self.var_source + gap)

    def to_batch_norm(self) -> _BatchNorm:
        """A batch-norm layer that computes what this layer does at inference (target images)."""
        bn = self.kind(self.num_features, eps=self.eps, momentum=self.momentum,
                       affine=self.weight is not None).to(self.mean_target.device)
        with torch.no_grad():
            mean, var = self.target_moments()
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        if self.weight is not None:
            bn.weight, bn.bias = self.weight, self.bias
        return bn

    def extra_repr(self) -> str:
        return f"{self.num_features}, alpha={float(self.alpha.detach()):.3f}"


def add_alignment_layers(model: nn.Module, alpha: float = 1.0) -> list[DomainAlignment]:
    """Replace every batch-norm layer of `model` by a DA layer; returns them in module order."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)]
    layers = []
    for name, bn in found:
        layer = DomainAlignment(bn, alpha)
        layer.train(bn.training)
        replace_module(model, name, layer)
        layers.append(layer)
    return layers


def remove_alignment_layers(model: nn.Module) -> None:
    """Fold every DA layer back into batch norm with its target moments."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, DomainAlignment)]
    for name, layer in found:
        bn = layer.to_batch_norm()
        bn.train(layer.training)
        replace_module(model, name, bn)


@torch.no_grad()
def clamp_alphas(layers: Sequence[DomainAlignment]) -> None:
    for layer in layers:
        layer.alpha.clamp_(*ALPHA_RANGE)


@contextlib.contextmanager
def domains(layers: Sequence[DomainAlignment], is_target: Sequence[bool],
            sizes: Sequence[int]) -> Iterator[None]:
    """Tell the DA layers which images of the next batch are target images (parts in order)."""
    device = layers[0].mean_target.device if layers else None
    mask = torch.repeat_interleave(torch.tensor(list(is_target), device=device),
                                   torch.tensor(list(sizes), device=device))
    for layer in layers:
        layer.target_mask = mask
    try:
        yield
    finally:
        for layer in layers:
            layer.target_mask = None
