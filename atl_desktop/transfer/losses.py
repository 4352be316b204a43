"""Domain-adaptation losses as small modules: forward(f_s, f_t) -> scalar.

- Maximum mean discrepancy (Gretton et al. 2012) with Gaussian kernels: biased
  and unbiased quadratic-time estimators and the linear-time one; one kernel
  (DaNN, Ghifary et al. 2014; DDC, Tzeng et al. 2014), several kernels
  (MK-MMD, DAN, Long et al. 2015) and several layers at once, whose kernels
  multiply (joint MMD, JAN, Long et al. 2017).
- A domain discriminator, and the adversarial losses built on it: with gradient
  reversal (DANN), domain confusion (Tzeng et al. 2015) and inverted labels
  (ADDA, Tzeng et al. 2017).
- Soft-label transfer (Tzeng et al. 2015) and the entropy of target predictions
  (AutoDIAL, Carlucci et al. 2017).

Nothing is stored on `self` inside `forward`, and nothing loops over samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from atl_desktop.transfer.grl import reverse_gradient

ESTIMATORS = ("biased", "unbiased", "linear")


# ---- maximum mean discrepancy -------------------------------------------------------


class GaussianKernel(nn.Module):
    """k(x, y) = exp(-|x - y|^2 / (2 sigma^2)).

    With a fixed `sigma`, the bandwidth is that. Otherwise sigma^2 = alpha * the
    mean squared distance between the points the estimator compares (the usual
    data-driven choice; several alphas make a multi-kernel family, as in DAN).
    """

    def __init__(self, sigma: float | None = None, alpha: float = 1.0):
        super().__init__()
        if sigma is not None and not sigma > 0 or not alpha > 0:
            raise ValueError("kernel bandwidths must be positive")
        self.sigma, self.alpha = sigma, alpha

    def forward(self, sq_distances: Tensor, mean_sq_distance: Tensor) -> Tensor:
        if self.sigma is not None:
            variance = torch.as_tensor(self.sigma**2, dtype=sq_distances.dtype)
        else:
            variance = self.alpha * mean_sq_distance.detach().clamp_min(1e-12)
        return torch.exp(-sq_distances / (2 * variance))

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}" if self.sigma is not None else f"alpha={self.alpha}"


def kernel_family(alphas: Sequence[float]) -> list[GaussianKernel]:
    return [GaussianKernel(alpha=a) for a in alphas]


DAN_ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)  # bandwidths 2^-3 .. 2^1 times the mean distance


def _flat(x: Tensor) -> Tensor:
    """(N, D) and at least single precision (half precision is too coarse for kernels)."""
    x = x.flatten(1)
    return x if x.dtype == torch.float64 else x.float()


def _pairwise_sq_distances(x: Tensor) -> Tensor:
    norms = x.pow(2).sum(1)
    return (norms[:, None] + norms[None, :] - 2 * x @ x.T).clamp_min(0)


def _layer_kernel(kernels: nn.ModuleList, sq: Tensor, mean_sq: Tensor) -> Tensor:
    """The multi-kernel of one layer: the mean of its kernels (equal weights beta_u = 1/U)."""
    return torch.stack([k(sq, mean_sq) for k in kernels]).mean(0)


class JointMMD(nn.Module):
    """Squared MMD under the product over layers of each layer's (multi-)kernel.

    forward(f_s, f_t) takes one tensor per layer for each domain (same order as
    `kernels`). With one layer this is MK-MMD; with one kernel, plain MMD.

    estimator: "biased" (V-statistic: means over all pairs, diagonals included),
    "unbiased" (U-statistic: within-domain means leave out i = j) or "linear"
    (Gretton et al. 2012, sec. 6: the mean over disjoint quadruples
    (s_2i, s_2i+1, t_2i, t_2i+1) of k(s,s') + k(t,t') - k(s,t') - k(s',t);
    unbiased, linear time, uses an even number of pairs from each domain).
    """

    def __init__(self, kernels: Sequence[Sequence[GaussianKernel]], estimator: str = "unbiased"):
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}")
        if not kernels or not all(kernels):
            raise ValueError("every layer needs at least one kernel")
        self.kernels = nn.ModuleList(nn.ModuleList(layer) for layer in kernels)
        self.estimator = estimator

    def forward(self, f_s: Sequence[Tensor], f_t: Sequence[Tensor]) -> Tensor:
        if len(f_s) != len(self.kernels) or len(f_t) != len(self.kernels):
            raise ValueError(f"expected {len(self.kernels)} layers per domain")
        if self.estimator == "linear":
            return self._linear(f_s, f_t)
        ns, nt = len(f_s[0]), len(f_t[0])
        joint = None
        for kernels, s, t in zip(self.kernels, f_s, f_t, strict=True):
            sq = _pairwise_sq_distances(torch.cat([_flat(s), _flat(t)]))
            k = _layer_kernel(kernels, sq, sq.mean())
            joint = k if joint is None else joint * k
        k_ss, k_tt, k_st = joint[:ns, :ns], joint[ns:, ns:], joint[:ns, ns:]
        if self.estimator == "biased":
            return k_ss.mean() + k_tt.mean() - 2 * k_st.mean()
        if ns < 2 or nt < 2:
            raise ValueError("the unbiased estimator needs at least two points per domain")
        within_s = (k_ss.sum() - k_ss.diagonal().sum()) / (ns * (ns - 1))
        within_t = (k_tt.sum() - k_tt.diagonal().sum()) / (nt * (nt - 1))
        return within_s + within_t - 2 * k_st.mean()

    def _linear(self, f_s: Sequence[Tensor], f_t: Sequence[Tensor]) -> Tensor:
        m = min(len(f_s[0]), len(f_t[0])) // 2 * 2
        if m < 2:
            raise ValueError("the linear-time estimator needs at least two points per domain")
        joint = None
        for kernels, s, t in zip(self.kernels, f_s, f_t, strict=True):
            s, t = _flat(s[:m]), _flat(t[:m])
            s1, s2, t1, t2 = s[0::2], s[1::2], t[0::2], t[1::2]
            # Four distances per quadruple: ss', tt', st', s't.
            sq = torch.stack([(s1 - s2).pow(2).sum(1), (t1 - t2).pow(2).sum(1),
                              (s1 - t2).pow(2).sum(1), (s2 - t1).pow(2).sum(1)])
            k = _layer_kernel(kernels, sq, sq.mean())
            joint = k if joint is None else joint * k
        return (joint[0] + joint[1] - joint[2] - joint[3]).mean()


class MultipleKernelMMD(JointMMD):
    """MK-MMD of one layer (one kernel: the MMD of DaNN and DDC)."""

    def __init__(self, kernels: Sequence[GaussianKernel], estimator: str = "unbiased"):
        super().__init__([kernels], estimator)

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward([f_s], [f_t])


# ---- adversarial losses --------------------------------------------------------------


class DomainDiscriminator(nn.Sequential):
    """An MLP from features to one logit, "source" being 1 (ADDA's 500-500-1 for digits)."""

    def __init__(self, in_features: int, hidden: int = 500, dropout: float = 0.0):
        super().__init__(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )


def _domain_bce(logits_s: Tensor, logits_t: Tensor, label_s: float, label_t: float) -> Tensor:
    """Binary cross-entropy with each domain weighted 1/2, whatever the batch sizes."""
    ls = F.binary_cross_entropy_with_logits(logits_s, torch.full_like(logits_s, label_s))
    lt = F.binary_cross_entropy_with_logits(logits_t, torch.full_like(logits_t, label_t))
    return (ls + lt) / 2


def _split_logits(discriminator: nn.Module, f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    logits = discriminator(torch.cat([_flat(f_s), _flat(f_t)])).squeeze(1)
    return logits[: len(f_s)], logits[len(f_s):]


def _through_fixed(discriminator: nn.Module, x: Tensor) -> Tensor:
    """The discriminator's output with its parameters held constant (gradients reach x only)."""
    fixed = {name: p.detach() for name, p in discriminator.named_parameters()}
    return functional_call(discriminator, fixed, (x,))


class DomainAdversarialLoss(nn.Module):
    """DANN: the discriminator's loss on features seen through a gradient reversal layer.

    One backward pass trains the discriminator to separate the domains and, with
    the gradient reversed and scaled by `coefficient`, the features to confuse it.
    """

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, f_s: Tensor, f_t: Tensor, coefficient: float = 1.0) -> Tensor:
        f = reverse_gradient(torch.cat([_flat(f_s), _flat(f_t)]), coefficient)
        logits = self.discriminator(f).squeeze(1)
        return _domain_bce(logits[: len(f_s)], logits[len(f_s):], 1.0, 0.0)


class DiscriminatorLoss(nn.Module):
    """The discriminator's own loss on fixed features (gradients reach the discriminator only)."""

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        return _domain_bce(*_split_logits(self.discriminator, f_s.detach(), f_t.detach()), 1.0, 0.0)


class DomainConfusionLoss(nn.Module):
    """Tzeng et al. 2015: cross-entropy between the (fixed) discriminator's output and the
    uniform distribution over domains, so the features leave it maximally unsure."""

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        logits = _through_fixed(self.discriminator, torch.cat([_flat(f_s), _flat(f_t)])).squeeze(1)
        return _domain_bce(logits[: len(f_s)], logits[len(f_s):], 0.5, 0.5)


class InvertedLabelLoss(nn.Module):
    """ADDA's target-encoder loss: the (fixed) discriminator should call target features source."""

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, f_t: Tensor) -> Tensor:
        logits = _through_fixed(self.discriminator, _flat(f_t)).squeeze(1)
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


# ---- predictions -------------------------------------------------------------------------


class SoftLabelLoss(nn.Module):
    """Tzeng et al. 2015: -sum_i l_i log p_i, with p = softmax(logits / T) of a labelled target
    image and l the average source softmax (at the same T) of its class."""

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError("the temperature must be positive")
        self.temperature = temperature

    def forward(self, logits: Tensor, labels: Tensor, soft_labels: Tensor) -> Tensor:
        log_p = F.log_softmax(logits.float() / self.temperature, dim=1)
        return -(soft_labels[labels] * log_p).sum(1).mean()


def class_softmax_sums(logits: Tensor, labels: Tensor, num_classes: int,
                       temperature: float) -> tuple[Tensor, Tensor]:
    """Per-class sums of softmax(logits / T) and per-class counts (for running averages)."""
    p = F.softmax(logits.detach().float() / temperature, dim=1)
    sums = torch.zeros(num_classes, p.shape[1], device=p.device).index_add_(0, labels, p)
    counts = torch.bincount(labels, minlength=num_classes).to(p.dtype)
    return sums, counts


class EntropyLoss(nn.Module):
    """Mean Shannon entropy (nats) of the predicted class distributions."""

    def forward(self, logits: Tensor) -> Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        return -(log_p.exp() * log_p).sum(1).mean()
