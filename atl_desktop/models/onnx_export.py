"""Hand a model over: the current checkpoint as ONNX, with a model card beside it.

`atl export P.atl model.onnx` writes three files:

- model.onnx: input `image`, float32 (N, C, S, S) with a dynamic batch size,
  already resized and normalised as the card says; output `probabilities`
  (N, classes). The softmax is inside the graph, so the output is what this
  application shows as confidences and a consumer needs no code of ours; a
  consumer that wants logits takes log(probabilities) (equal up to a constant per row).
  Exported by torch's TorchScript-based exporter (`dynamo=False`) at opset 17:
  it needs only `onnx`, not `onnxscript`.
- model.card.json: classes, input and preprocessing, backbone and the origin of its
  weights, the transfer method, the training labels by class and by annotator,
  the latest test accuracy with its 95 % Wilson interval and ECE when a round
  recorded them, dates, and the sha256 of the checkpoint and of the ONNX file.
- model.card.md: the same, short, for people.

The ONNX file also carries the class names and the normalisation as metadata
(`metadata_props`), so it describes itself where the card is lost.
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atl_desktop.jobs import Progress
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.files import atomic_write_bytes, atomic_write_text, sha256_bytes

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
CARD_FORMAT = "atl-model-card/1"
WEIGHT_ORIGINS = {None: "random initialisation (trained only on this project's images)",
                  "imagenet": "torchvision's ImageNet-1k weights"}


class ModelExportError(ProjectError):
    """An ONNX export that cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ModelExportReport:
    out: str
    card_json: str
    card_md: str
    checkpoint_id: int

    def summary(self) -> str:
        return (f"Exported checkpoint {self.checkpoint_id} to {self.out}; model card in "
                f"{Path(self.card_json).name} and {Path(self.card_md).name}.")


def card_paths(out: Path) -> tuple[Path, Path]:
    """model.onnx -> model.card.json, model.card.md (beside it)."""
    return out.with_name(f"{out.stem}.card.json"), out.with_name(f"{out.stem}.card.md")


def wilson_interval(correct: int, n: int) -> tuple[float, float]:
    """The Wilson score 95 % interval for correct/n; (0, 1) for n = 0."""
    from atl_desktop.intervals import wilson_interval as wilson

    if n <= 0:
        return 0.0, 1.0
    interval = wilson(correct, n)
    return interval.lower, interval.upper


def export_onnx(project: Project, out: str | os.PathLike, *, checkpoint_id: int | None = None,
                overwrite: bool = False) -> Iterator[Progress]:
    """Write the checkpoint (None: the latest) as ONNX and its model card; a job returning a
    ModelExportReport. The targets and the onnx package are checked at once, before the job
    starts, so that a refusal comes before any progress is shown."""
    out = Path(out)
    _check_targets(project, (out, *card_paths(out)), overwrite)
    try:
        import onnx
    except ImportError:
        raise ModelExportError("ONNX export needs the onnx package: pip install onnx") from None
    return _export(project, out, checkpoint_id, onnx)


def _export(project: Project, out: Path, checkpoint_id: int | None, onnx) -> Iterator[Progress]:
    import torch

    from atl_desktop.models.checkpoints import load_checkpoint

    yield Progress(0, 3, "loading the checkpoint")
    model, record = load_checkpoint(project, checkpoint_id)
    spec = model.spec
    yield Progress(1, 3, "exporting to ONNX")
    graph = _onnx_bytes(torch, model, spec)
    document = onnx.load_from_string(graph)
    onnx.checker.check_model(document)
    card = model_card(project, record, spec, onnx_version=onnx.__version__, torch_version=torch.__version__)
    for key, value in (("classes", json.dumps(card["classes"])), ("input", json.dumps(card["input"])),
                       ("checkpoint_sha256", record.sha256), ("producer", "ATL Desktop")):
        entry = document.metadata_props.add()
        entry.key, entry.value = key, value
    data = document.SerializeToString()
    card["onnx_sha256"] = sha256_bytes(data)
    yield Progress(2, 3, "writing the files")
    atomic_write_bytes(out, data)
    card_json, card_md = card_paths(out)
    atomic_write_text(card_json, json.dumps(card, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(card_md, card_markdown(card, out.name))
    yield Progress(3, 3, f"wrote {out.name}")
    return ModelExportReport(str(out), str(card_json), str(card_md), record.id)


def _check_targets(project: Project, targets: Sequence[Path], overwrite: bool) -> None:
    from atl_desktop.data.export import check_file_target, refuse_project_files

    for target in targets:
        try:
            check_file_target(target, overwrite)
            refuse_project_files(project, target)
        except ProjectError as error:
            raise ModelExportError(str(error)) from None


def _onnx_bytes(torch, model, spec) -> bytes:
    class WithSoftmax(torch.nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return torch.softmax(self.body(x), dim=1)

    wrapped = WithSoftmax(model.to("cpu").eval()).eval()
    example = torch.zeros(1, spec.channels, spec.size, spec.size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation; it is chosen on purpose (the
        # dynamo exporter needs onnxscript), so the notice is not passed on.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        with torch.no_grad():
            torch.onnx.export(
                wrapped, (example,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET, dynamo=False,
            )
    return buffer.getvalue()


# ---- the card ------------------------------------------------------------------------------------


def model_card(project: Project, record, spec, *, onnx_version: str = "", torch_version: str = "") -> dict[str, Any]:
    """What a consumer of the exported model needs to know, as JSON-ready values."""
    from atl_desktop.models.registry import BACKBONES

    config = dict(record.config or {})
    weights = config.get("weights")
    backbone = BACKBONES.get(record.backbone)
    return {
        "format": CARD_FORMAT,
        "exported": _iso(time.time()),
        "project": project.path.name,
        "classes": list(record.classes),
        "input": {
            "name": INPUT_NAME, "dtype": "float32",
            "shape": ["N", spec.channels, spec.size, spec.size],
            "channels": "RGB" if spec.channels == 3 else "grey (Pillow's L: 0.299 R + 0.587 G + 0.114 B)",
            "resize": (f"shorter side to {spec.size} px (bilinear, antialiased), then the central "
                       f"{spec.size} x {spec.size} px"),
            "scale": "pixel values / 255, then (value - mean) / std per channel",
            "mean": list(spec.mean[: spec.channels]), "std": list(spec.std[: spec.channels]),
            "stain_normalisation": spec.stain,  # applied before everything else when set
            "dicom": "DICOM images: the 8-bit windowed image (modality LUT, first VOI window, "
                     "MONOCHROME1 inverted), as this application imports them",
        },
        "output": {"name": OUTPUT_NAME, "shape": ["N", len(record.classes)],
                   "meaning": "softmax probabilities, in the order of `classes` (softmax inside the graph)"},
        "backbone": {
            "name": record.backbone,
            "description": backbone.description if backbone is not None else "",
            "weights": weights,
            "weights_origin": WEIGHT_ORIGINS.get(weights, f"a local weights file ({Path(str(weights)).name})"),
            "encoder": config.get("encoder"),
        },
        "transfer": {"method": config.get("method"), "options": config.get("method_options") or {},
                     "phase": config.get("phase"), "epochs": config.get("epochs"),
                     "seed": config.get("seed")},
        "training_labels": training_labels(project),
        "test": latest_test(project, record.id),
        "checkpoint": {"id": record.id, "sha256": record.sha256, "created": _iso(record.created),
                       "round": record.round_id, "parent": record.parent_id},
        "opset": OPSET,
        "versions": {"torch": torch_version, "onnx": onnx_version},
    }


def training_labels(project: Project) -> dict[str, Any]:
    """Current labels of the images training draws on (the pool of both domains; validation and
    test images and held-out audit images are left out), by class and by who gave them (the newest
    label event)."""
    names = {c.id: c.name for c in project.classes()}
    pool = set(project.image_ids(split="pool"))
    newest = {}
    for event in project.label_history():  # by id: the last one per image wins
        newest[event.image_id] = event
    by_class: Counter[str] = Counter()
    by_annotator: Counter[str] = Counter()
    for image_id, class_id in project.current_labels(for_training=True).items():
        if image_id not in pool or class_id not in names:
            continue
        by_class[names[class_id]] += 1
        event = newest.get(image_id)
        who = "unknown" if event is None else (f"{event.kind}:{event.annotator}" if event.annotator else event.kind)
        by_annotator[who] += 1
    return {"total": sum(by_class.values()), "by_class": dict(sorted(by_class.items())),
            "by_annotator": dict(sorted(by_annotator.items())),
            "note": "labels in the project when exported; the checkpoint may have been trained on fewer"}


def latest_test(project: Project, checkpoint_id: int) -> dict[str, Any] | None:
    """The newest test evaluation a round recorded: accuracy with its 95 % Wilson interval, ECE,
    and whether it measured the exported checkpoint."""
    for r in reversed(project.rounds()):
        test = r.metrics.get("test") or {}
        if not test.get("n"):
            continue
        n = int(test["n"])
        confusion = test.get("confusion") or []
        correct = sum(int(row[i]) for i, row in enumerate(confusion)) if confusion else round(test["accuracy"] * n)
        low, high = wilson_interval(correct, n)
        return {"round": r.id, "checkpoint": r.checkpoint_id, "this_checkpoint": r.checkpoint_id == checkpoint_id,
                "n": n, "correct": correct, "accuracy": correct / n, "wilson95": [low, high],
                "balanced_accuracy": test.get("balanced_accuracy"),
                "ece": (test.get("calibration") or {}).get("ece")}
    return None


def card_markdown(card: dict[str, Any], onnx_name: str) -> str:
    inp, bb, labels, test = card["input"], card["backbone"], card["training_labels"], card["test"]
    lines = [
        f"# Model card: {onnx_name}",
        "",
        f"Exported {card['exported']} from {card['project']} (checkpoint {card['checkpoint']['id']}, "
        f"sha256 `{card['checkpoint']['sha256']}`).",
        "",
        f"- **Classes** ({len(card['classes'])}, output order): {', '.join(card['classes'])}",
        f"- **Input** `{inp['name']}`: float32 N x {inp['shape'][1]} x {inp['shape'][2]} x {inp['shape'][3]}, "
        f"{inp['channels']}; {inp['resize']}; {inp['scale']}; mean {inp['mean']}, std {inp['std']}"
        + ("; stain normalisation first (see the JSON card)" if inp["stain_normalisation"] else ""),
        f"- **Output** `{card['output']['name']}`: {card['output']['meaning']}",
        f"- **Backbone**: {bb['name']}, weights from {bb['weights_origin']}"
        + (f"; encoder {bb['encoder']}" if bb["encoder"] else ""),
        f"- **Transfer method**: {card['transfer']['method'] or 'unknown'}",
        f"- **Training labels**: {labels['total']} — by class "
        + (", ".join(f"{k} {v}" for k, v in labels["by_class"].items()) or "none")
        + "; by annotator " + (", ".join(f"{k} {v}" for k, v in labels["by_annotator"].items()) or "none"),
    ]
    if test is None:
        lines.append("- **Test accuracy**: not measured (no round evaluated a test split)")
    else:
        which = "this checkpoint" if test["this_checkpoint"] else f"checkpoint {test['checkpoint']}"
        ece = f"; ECE {test['ece']:.3f}" if test.get("ece") is not None else ""
        lines.append(f"- **Test accuracy**: {test['accuracy']:.3f} ({test['correct']}/{test['n']}; 95 % Wilson "
                     f"interval {test['wilson95'][0]:.3f}–{test['wilson95'][1]:.3f}){ece}; round {test['round']}, "
                     f"{which}")
    lines += [f"- **ONNX**: opset {card['opset']}, sha256 `{card.get('onnx_sha256', '')}`", ""]
    return "\n".join(lines)


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
