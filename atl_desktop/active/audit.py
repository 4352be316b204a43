"""The audit sample: an honest accuracy estimate without a test set, and when to stop.

Active learning chooses the images it asks about, so the model's accuracy on them says
nothing about its accuracy on the rest: they are not a random sample. The audit sample is:
a share of the images put before the expert (default 1 in 10) is drawn uniformly at random
from the unlabelled target pool and kept out of training. Their labels, against the current
model's predictions, estimate how often the model is right on the images it has not seen:

- accuracy, with the Wilson score interval (Wilson 1927; Brown, Cai & DasGupta 2001):
  centre (p + z²/2n) / (1 + z²/n), half-width z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n);
- balanced accuracy, the mean of the per-class recalls over the K classes that have audit
  labels, with an adjusted Wald interval for a mean of independent proportions in the
  manner of Agresti & Caffo (2000): one success and one failure are added to each class,
  r̃_k = (x_k + 1) / (n_k + 2), and the interval is mean(r̃) ± z·sqrt(Σ r̃_k(1-r̃_k)/(n_k + 2)) / K,
  widened where needed to hold the estimate itself (with one or two labels a class the
  adjusted centre can lie far from the raw mean).
  (The plain Wald variance Σ r_k(1-r_k)/n_k / K² is zero for a class whose few audit images
  are all right, which makes intervals far too narrow at the sizes an audit has.) A class
  with no audit label yet is left out and named, so the estimate covers only the classes seen.
- each class's recall with its count.

Stopping (`stop_rule`): stop when predictions have stabilised between rounds (Cohen's kappa
on the stop set, active.calibration.stabilised) AND the audit's balanced-accuracy interval
covers every class and is narrow enough (width <= W, default 0.10) or its lower bound
reaches the user's target. Either alone is not enough: stable predictions may be stably
wrong, and a narrow interval says how good the model is, not that more labels stopped helping.

Pure numpy: no torch, no Qt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from atl_desktop.intervals import Z95, Interval, wilson_interval


def balanced_interval(correct: Sequence[int], counts: Sequence[int], z: float = Z95) -> Interval:
    """Mean of per-class recalls correct[k]/counts[k] (classes with counts[k] >= 1), with the
    adjusted Wald interval of the module docstring (one success, one failure added per class)."""
    x = np.asarray(correct, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    seen = n > 0
    if not seen.any():
        raise ValueError("no class has an audit label")
    x, n = x[seen], n[seen]
    k = len(n)
    adjusted = (x + 1) / (n + 2)
    half = z * math.sqrt(float(np.sum(adjusted * (1 - adjusted) / (n + 2)))) / k
    centre = float(adjusted.mean())
    estimate = float(np.mean(x / n))
    return Interval(estimate, max(0.0, min(centre - half, estimate)), min(1.0, max(centre + half, estimate)))


@dataclass(frozen=True)
class ClassRecall:
    name: str
    correct: int
    count: int  # audit labels of this class

    @property
    def recall(self) -> float | None:
        return self.correct / self.count if self.count else None


@dataclass(frozen=True)
class AuditEstimate:
    n: int  # audit labels used
    accuracy: Interval
    balanced_accuracy: Interval
    per_class: tuple[ClassRecall, ...]

    @property
    def missing_classes(self) -> list[str]:
        """Classes with no audit label: the balanced accuracy does not cover them."""
        return [c.name for c in self.per_class if not c.count]

    def to_json(self) -> dict:
        def interval(i: Interval) -> dict:
            return {"estimate": i.estimate, "lower": i.lower, "upper": i.upper}

        return {"n": self.n, "accuracy": interval(self.accuracy),
                "balanced_accuracy": interval(self.balanced_accuracy),
                "per_class": [{**asdict(c), "recall": c.recall} for c in self.per_class],
                "missing_classes": self.missing_classes}

    @classmethod
    def from_json(cls, data: dict) -> AuditEstimate:
        def interval(d: dict) -> Interval:
            return Interval(d["estimate"], d["lower"], d["upper"])

        return cls(int(data["n"]), interval(data["accuracy"]), interval(data["balanced_accuracy"]),
                   tuple(ClassRecall(c["name"], int(c["correct"]), int(c["count"])) for c in data["per_class"]))

    def summary(self) -> str:
        """One line: both estimates with their 95 % intervals."""
        a, b = self.accuracy, self.balanced_accuracy
        line = (f"{self.n} audit labels: accuracy {a.estimate:.1%} (95 % CI {a.lower:.1%}–{a.upper:.1%}), "
                f"balanced accuracy {b.estimate:.1%} ({b.lower:.1%}–{b.upper:.1%})")
        missing = self.missing_classes
        if missing:
            line += f"; no audit label yet for {', '.join(missing)}"
        return line


def audit_estimate(labels: Sequence[int], predictions: Sequence[int], classes: Sequence[str],
                   z: float = Z95) -> AuditEstimate:
    """The estimate from the audit images' labels and the model's predictions (class positions)."""
    y = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(predictions, dtype=np.int64)
    if y.shape != pred.shape or y.ndim != 1:
        raise ValueError("one prediction per audit label is needed")
    if not len(y):
        raise ValueError("no audit labels")
    if y.min() < 0 or y.max() >= len(classes):
        raise ValueError("audit labels must be class positions")
    hits = y == pred
    counts = np.bincount(y, minlength=len(classes))
    correct = np.bincount(y, weights=hits, minlength=len(classes)).astype(np.int64)
    per_class = tuple(ClassRecall(str(name), int(correct[k]), int(counts[k])) for k, name in enumerate(classes))
    return AuditEstimate(int(len(y)), wilson_interval(int(hits.sum()), int(len(y)), z),
                         balanced_interval(correct, counts, z), per_class)


# ---- the stopping rule -----------------------------------------------------------------------


@dataclass(frozen=True)
class StopDecision:
    stop: bool
    stabilised: bool
    audit_ok: bool
    reason: str  # in words, for the window, `atl info` and the report


def stop_rule(stabilised: bool, estimate: AuditEstimate | None, *, width: float = 0.10,
              target: float | None = None) -> StopDecision:
    """Stop when predictions have stabilised AND the audit's balanced-accuracy interval covers
    every class and either is at most `width` wide or has its lower bound at or above `target`."""
    if estimate is None:
        audit_ok, audit_words = False, "no audit labels yet"
    else:
        b = estimate.balanced_accuracy
        if estimate.missing_classes:
            audit_ok = False
            audit_words = f"no audit label yet for {', '.join(estimate.missing_classes)}"
        elif target is not None and b.lower >= target:
            audit_ok, audit_words = True, f"the audit's lower bound {b.lower:.1%} reaches the target {target:.1%}"
        elif b.width <= width:
            audit_ok, audit_words = True, f"the audit interval is {b.width:.1%} wide (at most {width:.0%})"
        else:
            audit_ok = False
            audit_words = f"the audit interval is {b.width:.1%} wide (wanted at most {width:.0%}"
            audit_words += f", or a lower bound of {target:.1%})" if target is not None else ")"
    stable_words = ("predictions have stabilised between rounds" if stabilised
                    else "predictions still change between rounds")
    stop = stabilised and audit_ok
    verdict = "Stop labelling" if stop else "Keep labelling"
    return StopDecision(stop, stabilised, audit_ok, f"{verdict}: {stable_words}; {audit_words}.")


def recorded_audit(project) -> dict | None:
    """The newest round's recorded audit estimate and stopping rule (either may be None):
    {"round", "estimate", "rule"}; None before any round recorded either."""
    for record in reversed(project.rounds()):
        rule = (record.metrics.get("stop") or {}).get("rule")
        if rule is not None or record.metrics.get("audit"):
            return {"round": record.id, "estimate": record.metrics.get("audit"), "rule": rule}
    return None


RULE_TEXT = ("Stop when the model's predictions have stabilised between rounds (Cohen's κ on a fixed "
             "set of unlabelled images, mean of the last 3 rounds ≥ 0.99) and the audit's balanced-accuracy "
             "95 % interval covers every class and is at most {width:.0%} wide or has its lower bound at or "
             "above your target.")
WHY_AUDIT = ("Only the audit images can say how accurate the model is: active learning chose the other "
             "labelled images because the model found them hard, so they are not a random sample of your images.")
