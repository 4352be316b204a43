"""Gradient reversal (Ganin & Lempitsky 2015) and its coefficient schedule.

The gradient reversal layer is the identity going forward and multiplies the
gradient by -λ going back, so one backward pass trains a domain classifier to
tell the domains apart and the feature extractor to make them indistinguishable.
DANN raises λ from 0 to 1 as λ_p = 2 / (1 + exp(-γ p)) - 1 with γ = 10 and p the
training progress in [0, 1], which keeps the noisy early discriminator from
disturbing the features.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coefficient: float) -> Tensor:
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.coefficient * grad, None


def reverse_gradient(x: Tensor, coefficient: float = 1.0) -> Tensor:
    """Identity forward; gradient times -coefficient backward."""
    return _ReverseGradient.apply(x, coefficient)


class GradientReversal(nn.Module):
    def forward(self, x: Tensor, coefficient: float = 1.0) -> Tensor:
        return reverse_gradient(x, coefficient)


class ReversalSchedule:
    """λ_p = (high - low) * (2 / (1 + exp(-gamma p)) - 1) + low, p = steps taken / total_steps."""

    def __init__(self, total_steps: int, gamma: float = 10.0, low: float = 0.0, high: float = 1.0):
        if total_steps < 1:
            raise ValueError("the schedule needs at least one step")
        self.total_steps = total_steps
        self.gamma, self.low, self.high = gamma, low, high
        self.steps = 0

    @property
    def progress(self) -> float:
        return min(1.0, self.steps / self.total_steps)

    @property
    def value(self) -> float:
        p = self.progress
        return (self.high - self.low) * (2.0 / (1.0 + math.exp(-self.gamma * p)) - 1.0) + self.low

    def step(self) -> None:
        self.steps += 1
