"""Transfer losses: values by hand on tiny inputs, brute-force cross-checks, gradient reversal."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from atl_desktop.transfer.grl import GradientReversal, ReversalSchedule, reverse_gradient
from atl_desktop.transfer.losses import (
    DiscriminatorLoss,
    DomainAdversarialLoss,
    DomainConfusionLoss,
    EntropyLoss,
    GaussianKernel,
    InvertedLabelLoss,
    JointMMD,
    MultipleKernelMMD,
    SoftLabelLoss,
    class_softmax_sums,
    kernel_family,
)

E = math.exp


def points(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)[:, None]


# ---- MMD by hand -------------------------------------------------------------------------


def test_mmd_of_two_one_dimensional_sets_by_hand():
    # s = {0, 1}, t = {1, 2}, k(x, y) = exp(-(x - y)^2 / 2) (sigma = 1).
    # K_ss = [[1, e^-1/2], [e^-1/2, 1]] = K_tt;  K_st over (0,1) (0,2) (1,1) (1,2):
    #   e^-1/2, e^-2, 1, e^-1/2.
    # biased:   (2 + 2e^-1/2)/4 * 2 - 2 * (1 + 2e^-1/2 + e^-2)/4 = 1/2 - e^-2/2       = 0.432332
    # unbiased: e^-1/2 + e^-1/2 - 2 * (1 + 2e^-1/2 + e^-2)/4     = e^-1/2 - 1/2 - e^-2/2 = 0.038862
    s, t = points(0, 1), points(1, 2)
    biased = MultipleKernelMMD([GaussianKernel(sigma=1.0)], "biased")(s, t)
    unbiased = MultipleKernelMMD([GaussianKernel(sigma=1.0)], "unbiased")(s, t)
    assert biased.item() == pytest.approx(0.5 - E(-2) / 2)
    assert unbiased.item() == pytest.approx(E(-0.5) - 0.5 - E(-2) / 2)
    # Linear time, one quadruple (s0, s1, t0, t1) = (0, 1, 1, 2):
    # k(0,1) + k(1,2) - k(0,2) - k(1,1) = 2e^-1/2 - e^-2 - 1 = 0.077724
    linear = MultipleKernelMMD([GaussianKernel(sigma=1.0)], "linear")(s, t)
    assert linear.item() == pytest.approx(2 * E(-0.5) - E(-2) - 1)


def test_data_driven_bandwidth_by_hand():
    # s = {0}, t = {2}: squared distances [[0, 4], [4, 0]], mean 2; alpha 0.5 -> sigma^2 = 1.
    # biased MMD = 1 + 1 - 2 exp(-4 / 2) = 2 - 2e^-2
    value = MultipleKernelMMD([GaussianKernel(alpha=0.5)], "biased")(points(0), points(2))
    assert value.item() == pytest.approx(2 - 2 * E(-2))
    # Two kernels (alpha 0.5 and 2: sigma^2 1 and 4) with equal weights:
    # 2 - 2 * (e^-2 + e^-1/2) / 2
    two = MultipleKernelMMD(kernel_family([0.5, 2.0]), "biased")(points(0), points(2))
    assert two.item() == pytest.approx(2 - (E(-2) + E(-0.5)))


def test_mmd_zero_for_identical_distributions_and_growing_with_the_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    for estimator in ("biased", "linear"):  # the same points: exactly zero
        mmd = MultipleKernelMMD(kernel_family([0.5, 1.0, 2.0]), estimator)
        assert mmd(x, x).abs().item() < 1e-6, estimator
    # The unbiased estimator is zero in expectation for two samples of one distribution
    # (for the very same points it is slightly negative: the diagonal counts only across).
    unbiased = MultipleKernelMMD([GaussianKernel(sigma=2.0)], "unbiased")
    same = torch.stack([unbiased(torch.randn(64, 5, generator=g), torch.randn(64, 5, generator=g))
                        for _ in range(50)])
    assert abs(same.mean().item()) < 3 * same.std().item() / 50**0.5
    assert unbiased(x, x).item() < 0
    for estimator in ("biased", "unbiased"):
        mmd = MultipleKernelMMD([GaussianKernel(sigma=2.0)], estimator)
        y = torch.randn(64, 5, generator=g)
        values = [mmd(x, y + shift).item() for shift in (0.0, 0.5, 1.0, 2.0)]
        assert values == sorted(values) and values[-1] > 10 * abs(values[0]), estimator


def brute_force_joint_mmd(layers_s, layers_t, sigmas, estimator):
    """Pair by pair with plain Python: the product over layers of Gaussian kernels."""
    def k(a_layers, i, b_layers, j):
        return math.prod(E(-float((a[i] - b[j]).pow(2).sum()) / (2 * s**2))
                         for a, b, s in zip(a_layers, b_layers, sigmas, strict=True))

    ns, nt = len(layers_s[0]), len(layers_t[0])
    skip = estimator == "unbiased"
    ss = [k(layers_s, i, layers_s, j) for i in range(ns) for j in range(ns) if not (skip and i == j)]
    tt = [k(layers_t, i, layers_t, j) for i in range(nt) for j in range(nt) if not (skip and i == j)]
    st = [k(layers_s, i, layers_t, j) for i in range(ns) for j in range(nt)]
    return sum(ss) / len(ss) + sum(tt) / len(tt) - 2 * sum(st) / len(st)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_joint_mmd_against_brute_force(estimator):
    g = torch.Generator().manual_seed(1)
    fs, ft = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    ps, pt = torch.rand(6, 4, generator=g, dtype=torch.float64), torch.rand(5, 4, generator=g, dtype=torch.float64)
    jmmd = JointMMD([[GaussianKernel(sigma=1.5)], [GaussianKernel(sigma=0.5)]], estimator)
    expected = brute_force_joint_mmd([fs, ps], [ft, pt], [1.5, 0.5], estimator)
    assert jmmd([fs, ps], [ft, pt]).item() == pytest.approx(expected, rel=1e-9)
    # One layer: the MMD of that layer, as computed pair by pair.
    single = JointMMD([[GaussianKernel(sigma=1.5)]], estimator)([fs], [ft])
    assert single.item() == pytest.approx(brute_force_joint_mmd([fs], [ft], [1.5], estimator), rel=1e-9)
    assert single.item() == pytest.approx(
        MultipleKernelMMD([GaussianKernel(sigma=1.5)], estimator)(fs, ft).item())


def test_linear_time_mmd_agrees_in_expectation_with_the_quadratic_one():
    # Both are unbiased estimates of the same MMD^2: averaged over many random pairings
    # of the same samples, the linear-time estimate equals the U-statistic (up to noise).
    g = torch.Generator().manual_seed(2)
    s = torch.randn(200, 2, generator=g, dtype=torch.float64)
    t = torch.randn(200, 2, generator=g, dtype=torch.float64) + 0.7
    kernels = [GaussianKernel(sigma=1.0), GaussianKernel(sigma=2.0)]
    quadratic = MultipleKernelMMD(kernels, "unbiased")(s, t).item()
    linear = MultipleKernelMMD(kernels, "linear")
    draws = torch.tensor([linear(s[torch.randperm(200, generator=g)], t[torch.randperm(200, generator=g)]).item()
                          for _ in range(400)])
    assert quadratic > 0.05
    assert abs(draws.mean().item() - quadratic) < 4 * draws.std().item() / 20 + 1e-3
    assert abs(draws.mean().item() - quadratic) < 0.1 * quadratic


def test_linear_time_joint_mmd_agrees_in_expectation_with_the_quadratic_one():
    # The same for JAN's product kernel over two layers (features, softmax predictions);
    # a pairing permutes both layers of a domain together.
    g = torch.Generator().manual_seed(3)
    fs = torch.randn(200, 2, generator=g, dtype=torch.float64)
    ft = torch.randn(200, 2, generator=g, dtype=torch.float64) + 0.5
    ps = torch.softmax(2 * fs @ torch.tensor([[1.0, 0, -1], [0, 1, 1]], dtype=torch.float64), 1)
    pt = torch.softmax(2 * ft @ torch.tensor([[1.0, 0, -1], [0, 1, 1]], dtype=torch.float64), 1)
    # (With these kernels the product kernel gives 0.075; averaging the layers instead would give 0.052.)
    kernels = [[GaussianKernel(sigma=1.0), GaussianKernel(sigma=2.0)], [GaussianKernel(sigma=1.0)]]
    quadratic = JointMMD(kernels, "unbiased")([fs, ps], [ft, pt]).item()
    linear = JointMMD(kernels, "linear")
    draws = []
    for _ in range(400):
        i, j = torch.randperm(200, generator=g), torch.randperm(200, generator=g)
        draws.append(linear([fs[i], ps[i]], [ft[j], pt[j]]).item())
    draws = torch.tensor(draws)
    assert quadratic > 0.02
    assert abs(draws.mean().item() - quadratic) < 4 * draws.std().item() / 20 + 1e-3
    assert abs(draws.mean().item() - quadratic) < 0.1 * quadratic


def test_mmd_refuses_bad_arguments():
    with pytest.raises(ValueError):
        MultipleKernelMMD([GaussianKernel()], "cubic")
    with pytest.raises(ValueError):
        GaussianKernel(sigma=0.0)
    with pytest.raises(ValueError):
        JointMMD([[GaussianKernel()], [GaussianKernel()]])([points(0, 1)], [points(0, 1)])


def test_losses_keep_no_state_from_forward():
    mmd = JointMMD([kernel_family([0.5, 1.0]), [GaussianKernel()]])
    before = dict(mmd.__dict__)
    mmd([torch.randn(4, 3), torch.randn(4, 2)], [torch.randn(4, 3), torch.randn(4, 2)])
    assert {k: v for k, v in mmd.__dict__.items() if k != "_modules"} == \
        {k: v for k, v in before.items() if k != "_modules"}
    assert isinstance(mmd.kernels, nn.ModuleList) and isinstance(mmd.kernels[0], nn.ModuleList)


# ---- gradient reversal ---------------------------------------------------------------------


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = GradientReversal()(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [-0.25, -0.5, -0.75]
    x.grad = None
    reverse_gradient(x * 2, 1.0).sum().backward()
    assert x.grad.tolist() == [-2.0, -2.0, -2.0]


def test_reversal_schedule_by_hand():
    schedule = ReversalSchedule(total_steps=10, gamma=10.0)
    values = []
    for _ in range(11):
        values.append(schedule.value)
        schedule.step()
    assert values[0] == 0.0
    # p = 0.5: 2 / (1 + e^-5) - 1 = 0.986614
    assert values[5] == pytest.approx(2 / (1 + E(-5)) - 1)
    assert values[10] == pytest.approx(2 / (1 + E(-10)) - 1)
    assert values == sorted(values) and values[-1] < 1.0


# ---- adversarial losses --------------------------------------------------------------------


def linear_discriminator(weight: float, bias: float) -> nn.Linear:
    d = nn.Linear(1, 1)
    with torch.no_grad():
        d.weight.fill_(weight)
        d.bias.fill_(bias)
    return d


def test_adversarial_losses_by_hand_and_where_their_gradients_go():
    # D(f) = f (weight 1, bias 0); source f = 2, target f = -1.
    # Domain BCE: (softplus(-2) + softplus(-1)) / 2  [source label 1, target label 0].
    s = torch.tensor([[2.0]], requires_grad=True)
    t = torch.tensor([[-1.0]], requires_grad=True)
    softplus = lambda z: math.log1p(E(z))  # noqa: E731
    d = linear_discriminator(1.0, 0.0)
    dann = DomainAdversarialLoss(d)(s, t, coefficient=0.5)
    assert dann.item() == pytest.approx((softplus(-2) + softplus(-1)) / 2)
    dann.backward()
    # d/ds softplus(-s)/2 = -sigmoid(-2)/2; reversed and scaled by 0.5.
    assert s.grad.item() == pytest.approx(0.5 * (1 / (1 + E(2))) / 2)
    assert d.weight.grad is not None

    # The discriminator's own loss: the same value, no gradient to the features.
    s.grad = None
    d.zero_grad()
    own = DiscriminatorLoss(d)(s, t)
    own.backward()
    assert own.item() == pytest.approx((softplus(-2) + softplus(-1)) / 2)
    assert s.grad is None and d.weight.grad is not None

    # Confusion: BCE against 1/2 for each domain: (softplus(-2) + softplus(2)) / 4 * 2 / 2 ...
    # per sample z: (softplus(-z) + softplus(z)) / 2; averaged over the two domains.
    d.zero_grad()
    confusion = DomainConfusionLoss(d)(s, t)
    expected = ((softplus(-2) + softplus(2)) / 2 + (softplus(1) + softplus(-1)) / 2) / 2
    assert confusion.item() == pytest.approx(expected)
    confusion.backward()
    assert s.grad is not None and d.weight.grad is None  # features only
    # ADDA: target features should be called source: softplus(-(-1)) = softplus(1).
    s.grad, t.grad = None, None
    inverted = InvertedLabelLoss(d)(t)
    inverted.backward()
    assert inverted.item() == pytest.approx(softplus(1)) and d.weight.grad is None
    assert t.grad.item() == pytest.approx(-1 / (1 + E(-1)))  # d softplus(-z)/dz at z = -1


def test_confusion_is_smallest_when_the_discriminator_is_unsure():
    s, t = torch.tensor([[0.0]]), torch.tensor([[0.0]])
    unsure = DomainConfusionLoss(linear_discriminator(1.0, 0.0))(s, t).item()
    sure = DomainConfusionLoss(linear_discriminator(1.0, 3.0))(s, t).item()
    assert unsure == pytest.approx(math.log(2)) and sure > unsure


# ---- prediction losses ---------------------------------------------------------------------


def test_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    # Uniform over 2: ln 2; certain: 0; mean ln2 / 2.
    assert EntropyLoss()(logits).item() == pytest.approx(math.log(2) / 2, abs=1e-6)


def test_soft_labels_by_hand():
    # Two source images of class 0 with logits (2, 0) and (0, 0) at T = 2:
    # softmax((1, 0)) = (e/(e+1), 1/(e+1)), softmax((0, 0)) = (1/2, 1/2).
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    sums, counts = class_softmax_sums(logits, torch.tensor([0, 0]), 2, temperature=2.0)
    soft = sums / counts.clamp_min(1)[:, None]
    e = E(1)
    assert soft[0].tolist() == pytest.approx([(e / (e + 1) + 0.5) / 2, (1 / (e + 1) + 0.5) / 2])
    assert counts.tolist() == [2.0, 0.0] and soft[1].tolist() == [0.0, 0.0]
    # A target image of class 0 with logits (0, 0): -sum l_i log 1/2 = ln 2.
    loss = SoftLabelLoss(temperature=2.0)(torch.zeros(1, 2), torch.tensor([0]), soft)
    assert loss.item() == pytest.approx(math.log(2))
    # With logits (2, 0), at T = 2: p = softmax((1, 0)); loss = -l_0 ln(e/(e+1)) - l_1 ln(1/(e+1)).
    loss = SoftLabelLoss(temperature=2.0)(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), soft)
    l0, l1 = soft[0].tolist()
    assert loss.item() == pytest.approx(-l0 * math.log(e / (e + 1)) - l1 * math.log(1 / (e + 1)))
