"""`atl report`: one self-contained HTML file that describes a project for a lab notebook
or an ethics board.

It holds the classes and label counts by annotator, the learning curve (with the
random-sampling baseline where one was recorded), calibration and the confusion
matrix of the current model on the test split, the methods and query strategies
used with their papers, the seeds, the package versions, and the sha256 of every
image and checkpoint. Figures are PNGs inlined as base64, so the file needs
nothing beside it. Everything comes from the project as recorded; only when the
current checkpoint was never assessed on the test split is it evaluated here.

`gather` collects the facts (JSON-able, tested on their own); `render_html`
lays them out; `report_job` does both as a job.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import platform
from collections.abc import Generator, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from atl_desktop.active.audit import RULE_TEXT, WHY_AUDIT, recorded_audit
from atl_desktop.active.calibration import ece_change_words
from atl_desktop.jobs import Progress
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.keys import (
    BASELINE_SETTING,
    DEFAULT_STOP_WIDTH,
    SOURCE_SETTING,
    STOP_RULE_SETTING,
)

PACKAGES = ("atl-desktop", "torch", "torchvision", "numpy", "pillow", "safetensors", "PySide6-Essentials",
            "platformdirs", "matplotlib", "pyqtgraph")
KIND_WORDS = {"human": "{who}", "import": "imported ({who})", "accepted-pseudo": "pseudo-label accepted by {who}"}

REFERENCES = {
    "typiclust": "G. Hacohen, A. Dekel, D. Weinshall, “Active Learning on a Budget: Opposite Strategies "
                 "Suit High and Low Budgets”, ICML 2022.",
    "probcover": "O. Yehuda, A. Dekel, G. Hacohen, D. Weinshall, “Active Learning Through a Covering Lens”, "
                 "NeurIPS 2022.",
    "clustermargin": "G. Citovsky et al., “Batch Active Learning at Scale”, NeurIPS 2021.",
    "simclr": "T. Chen, S. Kornblith, M. Norouzi, G. Hinton, “A Simple Framework for Contrastive Learning "
              "of Visual Representations”, ICML 2020.",
    "settles": "B. Settles, “Active Learning Literature Survey”, Computer Sciences Technical Report 1648, "
               "University of Wisconsin–Madison, 2009.",
    "ceal": "K. Wang, D. Zhang, Y. Li, R. Zhang, L. Lin, “Cost-Effective Active Learning for Deep Image "
            "Classification”, IEEE Trans. Circuits and Systems for Video Technology 27(12), 2017.",
    "bald": "N. Houlsby, F. Huszár, Z. Ghahramani, M. Lengyel, “Bayesian Active Learning for Classification "
            "and Preference Learning”, arXiv:1112.5745, 2011; Y. Gal, R. Islam, Z. Ghahramani, “Deep "
            "Bayesian Active Learning with Image Data”, ICML 2017.",
    "aift": "Z. Zhou, J. Shin, L. Zhang, S. Gurudu, M. Gotway, J. Liang, “Fine-tuning Convolutional Neural "
            "Networks for Biomedical Image Analysis: Actively and Incrementally”, CVPR 2017.",
    "coreset": "O. Sener, S. Savarese, “Active Learning for Convolutional Neural Networks: A Core-Set "
               "Approach”, ICLR 2018.",
    "gaal": "J.-J. Zhu, J. Bento, “Generative Adversarial Active Learning”, arXiv:1702.07956, 2017.",
    "asal": "C. Mayer, R. Timofte, “Adversarial Sampling for Active Learning”, WACV 2020.",
    "yosinski": "J. Yosinski, J. Clune, Y. Bengio, H. Lipson, “How transferable are features in deep "
                "neural networks?”, NeurIPS 2014.",
    "ddc": "E. Tzeng, J. Hoffman, N. Zhang, K. Saenko, T. Darrell, “Deep Domain Confusion: Maximizing for "
           "Domain Invariance”, arXiv:1412.3474, 2014; M. Ghifary, W. B. Kleijn, M. Zhang, “Domain "
           "Adaptive Neural Networks for Object Recognition”, PRICAI 2014.",
    "dan": "M. Long, Y. Cao, J. Wang, M. I. Jordan, “Learning Transferable Features with Deep Adaptation "
           "Networks”, ICML 2015.",
    "jan": "M. Long, H. Zhu, J. Wang, M. I. Jordan, “Deep Transfer Learning with Joint Adaptation "
           "Networks”, ICML 2017.",
    "dann": "Y. Ganin, V. Lempitsky, “Unsupervised Domain Adaptation by Backpropagation”, ICML 2015.",
    "confusion": "E. Tzeng, J. Hoffman, T. Darrell, K. Saenko, “Simultaneous Deep Transfer Across Domains "
                 "and Tasks”, ICCV 2015.",
    "adda": "E. Tzeng, J. Hoffman, K. Saenko, T. Darrell, “Adversarial Discriminative Domain Adaptation”, "
            "CVPR 2017.",
    "adabn": "Y. Li, N. Wang, J. Shi, J. Liu, X. Hou, “Revisiting Batch Normalization For Practical Domain "
             "Adaptation”, arXiv:1603.04779, 2016.",
    "autodial": "F. M. Carlucci, L. Porzi, B. Caputo, E. Ricci, S. Rota Bulò, “AutoDIAL: Automatic DomaIn "
                "Alignment Layers”, ICCV 2017.",
    "selective": "W. Ge, Y. Yu, “Borrowing Treasures from the Wealthy: Deep Transfer Learning through "
                 "Selective Joint Fine-Tuning”, CVPR 2017.",
    "calibration": "C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger, “On Calibration of Modern Neural "
                   "Networks”, ICML 2017; M. P. Naeini, G. Cooper, M. Hauskrecht, “Obtaining Well "
                   "Calibrated Probabilities Using Bayesian Binning”, AAAI 2015.",
    "stopping": "M. Bloodgood, K. Vijay-Shanker, “A Method for Stopping Active Learning Based on "
                "Stabilizing Predictions and the Need for User-Adjustable Stopping”, CoNLL 2009.",
}
# Query strategy -> (what it does, references). Strategies not listed cite no paper.
STRATEGY_PAPERS = {
    "random": ("uniform random sampling (the baseline)", ()),
    "least_confidence": ("least confidence", ("settles", "ceal")),
    "margin": ("smallest margin between the two best classes", ("settles", "ceal")),
    "entropy": ("highest predictive entropy", ("settles", "ceal")),
    "bald": ("BALD over Monte Carlo dropout", ("bald",)),
    "aift": ("AIFT: entropy and diversity over augmented copies", ("aift",)),
    "coreset": ("core-set, greedy k-centre", ("coreset",)),
    "mmd": ("greedy reduction of the MMD between labelled and unlabelled features", ()),
    "hybrid": ("uncertainty shortlist, then diversity", ("settles", "coreset")),
    "kmeans": ("cold start: one image per k-means cluster", ()),
    "typiclust": ("TypiClust: the most typical image of each uncovered cluster", ("typiclust",)),
    "probcover": ("ProbCover: greedy coverage of the embedding space by pure balls", ("probcover",)),
    "auto": ("typical first (TypiClust), then smallest margin with diversity", ("typiclust", "clustermargin")),
    "gaal": ("GAAL: generated images of maximal entropy", ("gaal",)),
    "asal": ("ASAL: pool images nearest to generated high-entropy images", ("asal",)),
}
METHOD_PAPERS = {"finetune": ("yosinski",), "source_only": (), "ddc": ("ddc",), "dan": ("dan",),
                 "jan": ("jan",), "dann": ("dann",), "confusion": ("confusion",), "adda": ("adda",),
                 "adabn": ("adabn",), "autodial": ("autodial",), "selective": ("selective",)}


# ---- the facts ---------------------------------------------------------------------------


def gather(project: Project) -> dict[str, Any]:
    """Everything the report says, from the project as recorded (nothing evaluated)."""
    classes = project.class_names()
    rounds = [r for r in project.rounds() if r.finished is not None]
    checkpoints = project.checkpoints()
    return {
        "project": {"name": project.path.name, "path": str(project.path),
                    "description": project.get_setting("description")},
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": project.counts(),
        "classes": classes,
        "labels_by_annotator": labels_by_annotator(project),
        "curve": learning_curve(rounds),
        "baseline": project.get_setting(BASELINE_SETTING),
        "source_model": project.get_setting(SOURCE_SETTING),
        "assessed": latest_assessment(rounds),
        "methods": methods_used(project, rounds, checkpoints),
        "seeds": seeds_used(project, rounds, checkpoints),
        "versions": package_versions(),
        "images": image_hashes(project),
        "checkpoints": [{"id": c.id, "parent": c.parent_id, "round": c.round_id, "backbone": c.backbone,
                         "method": c.config.get("method"), "phase": c.config.get("phase"),
                         "sha256": c.sha256, "file": c.file,
                         "created": _when(c.created)} for c in checkpoints],
        "current_checkpoint": None if project.latest_checkpoint() is None else project.latest_checkpoint().id,
        "audit": {"counts": project.counts()["audit"], "recorded": recorded_audit(project), "now": None,
                  "note": None, "width": (project.get_setting(STOP_RULE_SETTING) or {}).get("width",
                                                                                         DEFAULT_STOP_WIDTH)},
    }


def labels_by_annotator(project: Project) -> dict[str, dict[str, int]]:
    """Current labels counted per class and per who gave them: {who: {class: n}}.
    A label's giver is its newest event's annotator, with how it was given."""
    names = {c.id: c.name for c in project.classes()}
    newest: dict[int, Any] = {}
    for event in project.label_history():
        newest[event.image_id] = event
    table: dict[str, dict[str, int]] = {}
    for event in newest.values():
        if event.class_id is None:
            continue
        who = KIND_WORDS.get(event.kind, event.kind + " ({who})").format(who=event.annotator or "unnamed")
        name = names.get(event.class_id, f"(deleted class {event.class_id})")
        row = table.setdefault(who, {})
        row[name] = row.get(name, 0) + 1
    return dict(sorted(table.items()))


def learning_curve(rounds: Sequence) -> list[dict[str, Any]]:
    """Test accuracy after each finished round, against the labelled target images then."""
    points = []
    for r in rounds:
        test = r.metrics.get("test") or {}
        accuracy = test.get("accuracy", r.metrics.get("test_accuracy"))
        points.append({"round": r.id, "strategy": r.strategy, "labels": r.metrics.get("labels"),
                       "accuracy": accuracy, "ece": (test.get("calibration") or {}).get("ece"),
                       "kappa": (r.metrics.get("stop") or {}).get("kappa"), "checkpoint": r.checkpoint_id})
    return points


def latest_assessment(rounds: Sequence) -> dict[str, Any] | None:
    """The newest round's test metrics (confusion, calibration) and its checkpoint."""
    for r in reversed(rounds):
        if (r.metrics.get("test") or {}).get("confusion"):
            return {"checkpoint": r.checkpoint_id, "round": r.id, "test": r.metrics["test"]}
    return None


def methods_used(project: Project, rounds: Sequence, checkpoints: Sequence) -> list[dict[str, Any]]:
    """Each method and strategy the project's records show, with what it is and its papers."""
    from atl_desktop.transfer.methods import METHODS

    used: list[dict[str, Any]] = []
    for name in dict.fromkeys(c.config.get("method") for c in checkpoints if c.config.get("method")):
        method = METHODS.get(name)
        used.append({"kind": "transfer method", "name": name,
                     "what": getattr(method, "description", "(unknown to this version)"),
                     "where": ", ".join(f"checkpoint {c.id}" for c in checkpoints
                                        if c.config.get("method") == name),
                     "references": [REFERENCES[k] for k in METHOD_PAPERS.get(name, ())]})
    if any(c.config.get("freeze") or c.config.get("lr_decay", 1.0) != 1.0 for c in checkpoints):
        used.append({"kind": "fine-tuning", "name": "frozen stages / layer-wise learning rates",
                     "what": "early stages kept fixed or trained with smaller rates", "where": "training settings",
                     "references": [REFERENCES["yosinski"]]})
    for name in dict.fromkeys(r.strategy for r in project.rounds()):
        what, keys = STRATEGY_PAPERS.get(name, (name, ()))
        used.append({"kind": "query strategy", "name": name, "what": what,
                     "where": ", ".join(f"round {r.id}" for r in project.rounds() if r.strategy == name),
                     "references": [REFERENCES[k] for k in keys]})
    heads = [r for r in project.rounds() if r.params.get("head") in ("logreg", "prototype")]
    if heads:
        used.append({"kind": "embedding-first loop", "name": "head on cached embeddings",
                     "what": "a logistic-regression or prototype head refitted on the encoder's embeddings "
                             "after every label; the encoder stays frozen",
                     "where": ", ".join(f"round {r.id} ({r.params['head']})" for r in heads), "references": []})
    selfsup = [c for c in checkpoints if c.config.get("phase") == "self-supervised"]
    if selfsup:
        used.append({"kind": "encoder", "name": "SimCLR (self-supervised)",
                     "what": "an encoder learnt from the project's own unlabelled images",
                     "where": ", ".join(f"checkpoint {c.id}" for c in selfsup),
                     "references": [REFERENCES["simclr"]]})
    if project.pseudo_labels(None):
        used.append({"kind": "pseudo-labels", "name": "CEAL", "what": "confident predictions proposed as "
                     "labels, threshold decaying per round", "where": "review of pseudo-labels",
                     "references": [REFERENCES["ceal"]]})
    if any((r.metrics.get("test") or {}).get("calibration") for r in rounds):
        used.append({"kind": "assessment", "name": "calibration (ECE)", "what": "reliability diagram and "
                     "expected calibration error", "where": "each round's test evaluation",
                     "references": [REFERENCES["calibration"]]})
    if any(r.metrics.get("stop") for r in rounds):
        used.append({"kind": "assessment", "name": "stopping signal", "what": "agreement (Cohen's κ) of "
                     "successive models on a fixed unlabelled stop set", "where": "each round",
                     "references": [REFERENCES["stopping"]]})
    return used


def seeds_used(project: Project, rounds: Sequence, checkpoints: Sequence) -> dict[str, Any]:
    stop = project.get_setting("stop_set")
    return {
        "rounds": {str(r.id): r.params.get("seed") for r in project.rounds()},
        "checkpoints": {str(c.id): c.config.get("seed") for c in checkpoints},
        "stop set": None if not stop else stop.get("seed"),
        "random baseline": (project.get_setting(BASELINE_SETTING) or {}).get("seed"),
    }


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def image_hashes(project: Project) -> dict[str, Any]:
    """Every image's sha256, and one digest over them all (sha256 of the sorted hex digests,
    one per line), which changes if any image is added, removed or altered."""
    rows = [(r.id, r.domain, r.split, r.original_path or r.location, r.sha256) for r in project.images()]
    digests = sorted(r[4] for r in rows)
    combined = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    return {"count": len(rows), "combined": combined, "rows": rows}


def _when(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


# ---- the current model on the test split ---------------------------------------------------


def current_assessment_job(project: Project, facts: Mapping[str, Any], *,
                           device: str = "auto") -> Generator[Progress, None, dict[str, Any] | None]:
    """The current checkpoint's test metrics: as recorded by its round, else evaluated now
    (when the test split has labels or ground truth); None when there is nothing to show."""
    from atl_desktop.loop.rounds import (
        calibration_split,
        evaluation_metrics,
        predict_probs,
        temperature_job,
    )

    current = facts["current_checkpoint"]
    assessed = facts["assessed"]
    if current is None or (assessed is not None and assessed["checkpoint"] == current):
        return assessed
    if not project.image_ids("target", "test"):
        return assessed
    from atl_desktop.models.checkpoints import load_checkpoint
    from atl_desktop.models.transforms import input_transform
    from atl_desktop.transfer.train import project_eval_dataset

    classes = project.class_names()
    model, _ = load_checkpoint(project, current, classes=classes)
    dataset = project_eval_dataset(project, "test", input_transform(model.spec))
    if not any(label >= 0 for label in dataset.labels):
        return assessed
    probs = yield from predict_probs(model, dataset, device=device, message="evaluating the current model")
    split = calibration_split(project)
    fit = (yield from temperature_job(project, model, split, device=device)) if split else None
    return {"checkpoint": current, "round": None,
            "test": evaluation_metrics(probs, dataset.labels, classes, fit)}


def current_audit_job(project: Project, audit: Mapping[str, Any], *,
                      device: str = "auto") -> Generator[Progress, None, dict[str, Any]]:
    """The audit facts with the current model measured on the audit images now (when any is
    labelled), or a note saying why not."""
    from atl_desktop.active.scoring import ScoringConfig
    from atl_desktop.jobs import relabel
    from atl_desktop.loop.session import audit_job, audit_labels

    out = dict(audit)
    if not len(audit_labels(project)[0]):
        return out
    try:
        result = yield from relabel(audit_job(project, scoring=ScoringConfig(device=None if device == "auto"
                                                                             else device)), "audit")
    except ProjectError as error:
        out["note"] = str(error)
        return out
    out["now"] = result.to_json()
    return out


def report_job(project: Project, out: str | Path, *, evaluate: bool = True,
               device: str = "auto") -> Generator[Progress, None, Path]:
    """Write the report to `out` (atomically); returns its path."""
    from atl_desktop.store.files import atomic_write_text

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ProjectError(f"The report is an HTML file; give a name ending in .html, not {out.name!r}.")
    yield Progress(0, 3, "reading the project")
    facts = gather(project)
    if evaluate:
        facts["assessed"] = yield from current_assessment_job(project, facts, device=device)
        facts["audit"] = yield from current_audit_job(project, facts["audit"], device=device)
    yield Progress(1, 3, "drawing the figures")
    figures = draw_figures(facts)
    yield Progress(2, 3, "writing the report")
    atomic_write_text(out, render_html(facts, figures))
    yield Progress(3, 3, f"wrote {out}")
    return out


# ---- figures -----------------------------------------------------------------------------


def draw_figures(facts: Mapping[str, Any]) -> dict[str, str]:
    """PNG figures as base64 text: learning curve, reliability diagram, confusion matrix."""
    figures = {}
    if any(p["accuracy"] is not None for p in facts["curve"]) or facts["baseline"]:
        figures["curve"] = _png(_curve_figure(facts))
    test = (facts["assessed"] or {}).get("test") or {}
    if (test.get("calibration") or {}).get("bins"):
        figures["calibration"] = _png(_reliability_figure(test["calibration"]))
    if test.get("confusion"):
        figures["confusion"] = _png(_confusion_figure(test["confusion"], test.get("classes") or facts["classes"]))
    return figures


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _curve_figure(facts: Mapping[str, Any]):
    figure = _figure(6.4, 3.8)
    axes = figure.add_subplot()
    start = facts["source_model"]
    points = [(p["labels"], p["accuracy"]) for p in facts["curve"] if p["accuracy"] is not None]
    if start and start.get("accuracy") is not None:
        points.insert(0, (start.get("labels", 0), start["accuracy"]))
    if points:
        xs, ys = zip(*points, strict=True)
        axes.plot(xs, ys, "o-", color="#0072B2", label="this project's rounds")
    baseline = facts["baseline"]
    if baseline:
        axes.plot(baseline["labels"], baseline["accuracy"], "s--", color="#888888",
                  label=f"{baseline.get('strategy', 'random')} sampling (baseline)")
    axes.set_xlabel("labelled target images")
    axes.set_ylabel("test accuracy")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return figure


def temperature_words(calibration: Mapping[str, Any]) -> str:
    """The test split's ECE before and after temperature scaling, in one line."""
    scaled = calibration.get("scaled")
    if not scaled:
        return (f"ECE {calibration['ece']:.2f}, not temperature-scaled: a temperature is fitted on "
                "labelled validation images the model never trained on, and this project has too few.")
    change = ece_change_words(calibration["ece"], scaled["ece"], scaled["temperature"])
    return (f"Temperature scaling (Guo et al. 2017): {change}, T fitted on {scaled['fitted_on']}; "
            "accuracy is unchanged.")


def _reliability_figure(calibration: Mapping[str, Any]):
    figure = _figure(4.2, 3.8)
    axes = figure.add_subplot()
    bins = [b for b in calibration["bins"] if b.get("count")]
    axes.plot([0, 1], [0, 1], "--", color="#888888", label="perfect calibration")
    axes.bar([(b["lower"] + b["upper"]) / 2 for b in bins], [b["accuracy"] for b in bins],
             width=[(b["upper"] - b["lower"]) * 0.9 for b in bins], color="#56B4E9", label="accuracy per bin")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence (top probability)")
    axes.set_ylabel("accuracy")
    title = f"ECE {calibration['ece']:.3f}"
    scaled = calibration.get("scaled")
    if scaled:
        after = [b for b in scaled["bins"] if b.get("count")]
        axes.plot([b["confidence"] for b in after], [b["accuracy"] for b in after], "o-", color="#D55E00",
                  label=f"after temperature scaling (T = {scaled['temperature']:.2g})")
        title += f" → {scaled['ece']:.3f}"
    axes.set_title(title)
    axes.legend(loc="upper left")
    return figure


def _confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str]):
    import numpy as np

    counts = np.asarray(confusion)
    side = max(3.4, 0.3 * len(counts) + 2.0)
    figure = _figure(side + 1.2, side)
    axes = figure.add_subplot()
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i, j in np.ndindex(counts.shape):
        if counts[i, j]:
            axes.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                      color="white" if share[i, j] > 0.6 else "black")
    names = [_short(c) for c in classes]
    axes.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(len(names)), names, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    figure.colorbar(image, ax=axes, label="share of the true class")
    return figure


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


# ---- HTML --------------------------------------------------------------------------------

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; }
th { background: #f3f3f3; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
code, .hash { font-family: ui-monospace, monospace; font-size: 0.85em; word-break: break-all; }
.note { color: #555; } img { max-width: 100%; }
"""


def render_html(facts: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    project = facts["project"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ATL Desktop report: {_e(project['name'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Report on {_e(project['name'])}</h1>",
        f"<p class=note>Project file <code>{_e(project['path'])}</code>; report written "
        f"{_e(facts['generated'])} by ATL Desktop {_e(facts['versions'].get('atl-desktop', '?'))}.</p>",
    ]
    if project["description"]:
        parts.append(f"<p>{_e(project['description'])}</p>")
    parts += _data_section(facts)
    parts += _curve_section(facts, figures)
    parts += _model_section(facts, figures)
    parts += _audit_section(facts)
    parts += _methods_section(facts)
    parts += _reproduce_section(facts)
    parts.append("</body></html>")
    return "\n".join(parts)


def _data_section(facts: Mapping[str, Any]) -> list[str]:
    counts = facts["counts"]
    out = ["<h2>Images and labels</h2>",
           _table(("domain / split", "images"), sorted(counts["images"].items()), numeric=(1,)),
           f"<p>{counts['labelled']} images labelled, {counts['unlabelled']} unlabelled; "
           f"{counts['pending_pseudo']} pseudo-labels waiting for review; hidden ground truth "
           f"(simulations only, never shown as a label) for {counts['truth']} images.</p>",
           "<h3>Current labels per class, by who gave them</h3>"]
    who = list(facts["labels_by_annotator"])
    if not who:
        return [*out, "<p>No labels yet.</p>"]
    classes = list(facts["classes"]) + sorted({c for row in facts["labels_by_annotator"].values()
                                               for c in row} - set(facts["classes"]))
    rows = [(c, *(facts["labels_by_annotator"][w].get(c, 0) for w in who),
             sum(facts["labels_by_annotator"][w].get(c, 0) for w in who)) for c in classes]
    rows.append(("all classes", *(sum(facts["labels_by_annotator"][w].values()) for w in who),
                 sum(sum(r.values()) for r in facts["labels_by_annotator"].values())))
    out.append(_table(("class", *who, "total"), rows, numeric=range(1, len(who) + 2)))
    return out


def _curve_section(facts: Mapping[str, Any], figures: Mapping[str, str]) -> list[str]:
    out = ["<h2>Learning curve</h2>"]
    if "curve" not in figures:
        return [*out, "<p>No round has finished with a test evaluation yet.</p>"]
    out.append(_img(figures["curve"], "Test accuracy against the number of labelled target images"))
    start = facts["source_model"]
    rows = [("source model", "—", 0 if not start else start.get("labels", 0),
             _num(None if not start else start.get("accuracy")), "—", "—")] if start else []
    rows += [(p["round"], p["strategy"], p["labels"], _num(p["accuracy"]), _num(p["ece"]), _num(p["kappa"]))
             for p in facts["curve"]]
    out.append(_table(("round", "strategy", "labels", "test accuracy", "ECE", "κ vs previous round"), rows,
                      numeric=(2, 3, 4, 5)))
    baseline = facts["baseline"]
    if baseline:
        out.append(f"<p>Baseline: {_e(baseline.get('strategy', 'random'))} sampling, "
                   f"{_e(baseline.get('how', ''))} (seed {_e(baseline.get('seed'))}): "
                   + ", ".join(f"{n} labels {_num(a)}" for n, a in zip(baseline["labels"], baseline["accuracy"],
                                                                        strict=True)) + ".</p>")
    else:
        out.append("<p class=note>No random-sampling baseline is recorded for this project "
                   "(`atl simulate` measures one on labelled data).</p>")
    return out


def _model_section(facts: Mapping[str, Any], figures: Mapping[str, str]) -> list[str]:
    out = ["<h2>The current model on the test split</h2>"]
    assessed = facts["assessed"]
    if not assessed:
        return [*out, "<p>Not assessed: there is no checkpoint, or no labelled test images.</p>"]
    test = assessed["test"]
    when = f"round {assessed['round']}" if assessed.get("round") else "evaluated for this report"
    note = "" if assessed["checkpoint"] == facts["current_checkpoint"] else (
        f" (the current checkpoint is {facts['current_checkpoint']}; it has no test assessment)")
    out.append(f"<p>Checkpoint {assessed['checkpoint']} ({when}){note}: {test['n']} test images, accuracy "
               f"{_num(test['accuracy'])}, balanced accuracy {_num(test.get('balanced_accuracy'))}.</p>")
    if "calibration" in figures:
        out.append("<h3>Calibration</h3>")
        out.append(_img(figures["calibration"], "Reliability diagram"))
        out.append("<p class=note>Bars below the diagonal: the model is more confident than it is "
                   "right. ECE: the bins' gap between accuracy and confidence, weighted by their size.</p>")
    if test.get("calibration"):
        out.append(f"<p>{html.escape(temperature_words(test['calibration']))}</p>")
    if "confusion" in figures:
        out.append("<h3>Confusion matrix</h3>")
        out.append(_img(figures["confusion"], "Confusion matrix, rows are the true classes"))
        classes = test.get("classes") or facts["classes"]
        recalls = test.get("per_class_recall") or []
        out.append(_table(("class", "recall", "test images"),
                          [(c, _num(r), sum(row)) for c, r, row in zip(classes, recalls, test["confusion"],
                                                                       strict=False)], numeric=(1, 2)))
    return out


def _audit_section(facts: Mapping[str, Any]) -> list[str]:
    audit = facts["audit"]
    counts = audit["counts"]
    out = ["<h2>The audit sample: accuracy without a test set</h2>",
           f"<p>{_e(WHY_AUDIT)} {counts['drawn']} audit images were drawn at random from the unlabelled "
           f"pool; {counts['held_out']} are held out of training ({counts['labelled']} of them labelled), "
           f"{counts['drawn'] - counts['held_out']} were released to train the model.</p>"]
    if audit.get("note"):
        out.append(f"<p class=note>{_e(audit['note'])}</p>")
    recorded = audit.get("recorded") or {}
    estimate = audit.get("now") or recorded.get("estimate")
    if estimate:
        when = "the current model, measured for this report" if audit.get("now") else \
            f"round {recorded['round']}'s model, as recorded"
        a, b = estimate["accuracy"], estimate["balanced_accuracy"]
        out.append(f"<p>{_e(when)}: {estimate['n']} audit labels; accuracy {_num(a['estimate'])} "
                   f"(95 % interval {_num(a['lower'])}–{_num(a['upper'])}, Wilson); balanced accuracy "
                   f"{_num(b['estimate'])} ({_num(b['lower'])}–{_num(b['upper'])}, adjusted Wald over the "
                   "classes with audit labels).</p>")
        out.append(_table(("class", "recall", "audit labels"),
                          [(c["name"], _num(c["recall"]), c["count"]) for c in estimate["per_class"]],
                          numeric=(1, 2)))
    elif not audit.get("note"):
        out.append("<p>No audit label yet: label the audit images a query shows (1 in 10 by default).</p>")
    if recorded.get("rule"):
        out.append(f"<p><b>Stopping</b> (round {recorded['round']}): {_e(recorded['rule']['reason'])}</p>")
    out.append(f"<p class=note>{_e(RULE_TEXT.format(width=audit['width']))}</p>")
    return out


def _methods_section(facts: Mapping[str, Any]) -> list[str]:
    out = ["<h2>Methods and strategies used</h2>"]
    if not facts["methods"]:
        return [*out, "<p>None yet: no checkpoint and no round.</p>"]
    rows = [(m["kind"], m["name"], m["what"], m["where"], "<br>".join(_e(r) for r in m["references"]) or "—")
            for m in facts["methods"]]
    out.append(_table(("kind", "name", "what", "where", "references"), rows, raw=(4,)))
    return out


def _reproduce_section(facts: Mapping[str, Any]) -> list[str]:
    seeds = facts["seeds"]
    out = ["<h2>Reproducibility</h2>", "<h3>Seeds</h3>",
           _table(("what", "seed"), [(f"round {k}", v) for k, v in seeds["rounds"].items()]
                  + [(f"checkpoint {k}", v) for k, v in seeds["checkpoints"].items()]
                  + [(k, v) for k, v in seeds.items() if k not in ("rounds", "checkpoints") and v is not None]),
           "<h3>Software</h3>", _table(("package", "version"), list(facts["versions"].items())),
           "<h3>Checkpoints</h3>",
           _table(("id", "parent", "round", "backbone", "method", "phase", "created (UTC)", "sha256"),
                  [(c["id"], c["parent"], c["round"], c["backbone"], c["method"], c["phase"], c["created"],
                    f"<span class=hash>{_e(c['sha256'])}</span>") for c in facts["checkpoints"]], raw=(7,)),
           "<h3>Images</h3>"]
    images = facts["images"]
    out.append(f"<p>{images['count']} images. Combined digest (sha256 of the sorted image sha256s, one per "
               f"line): <span class=hash>{images['combined']}</span></p>")
    rows = [(i, f"{d}/{s}", p, f"<span class=hash>{h}</span>") for i, d, s, p, h in images["rows"]]
    out.append(f"<details><summary>Every image's sha256 ({images['count']})</summary>"
               + _table(("id", "domain/split", "path", "sha256"), rows, raw=(3,)) + "</details>")
    return out


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: Sequence[int] = (),
           raw: Sequence[int] = ()) -> str:
    numeric, raw = set(numeric), set(raw)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=n' if k in numeric else ''}>{v if k in raw else _e(v)}</td>"
                         for k, v in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(data: str, alt: str) -> str:
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></p>'


def _num(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _e(value: Any) -> str:
    return html.escape("—" if value is None else str(value))
