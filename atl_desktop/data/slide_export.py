"""Per-slide results: a CSV of patches, and a GeoJSON of patch squares that QuPath imports.

Coordinates are level-0 pixels of the slide, as QuPath and OpenSlide use them.
In the GeoJSON every patch is a square polygon, a QuPath "detection" (light
to draw in thousands) classified by its label when it has one, else by the
model's prediction; probabilities, uncertainty and tissue fraction go into its
measurements (QuPath 0.4 and later read them as a name -> value map).
Export only reads the project.
"""

from __future__ import annotations

import csv
import io
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from atl_desktop.data.export import ExportError, check_file_target, safe_name
from atl_desktop.store import Project
from atl_desktop.store.files import atomic_write_text

SLIDE_EXPORT_FORMATS = ("csv", "geojson")


class PatchPredictions(Protocol):
    """The model's view (`active.predictions.Predictions` is one): (n, C) probabilities in
    class order by image id, NaN rows where not scored, and an uncertainty per row."""

    image_ids: np.ndarray
    probs: np.ndarray
    uncertainty: np.ndarray


@dataclass(frozen=True)
class _PatchResult:
    image_id: int
    x: int
    y: int
    extent: int
    level: int
    tissue: float | None
    label: str | None
    predicted: str | None
    confidence: float | None
    uncertainty: float | None
    probs: tuple[float, ...]


def slide_results(project: Project, slide_id: int, predictions: PatchPredictions | None = None) -> list[_PatchResult]:
    slide = project.slide(slide_id)
    classes = project.classes()
    names = {c.id: c.name for c in classes}
    labels = project.current_labels()
    where = {} if predictions is None else {int(i): k for k, i in enumerate(predictions.image_ids)}
    rows = []
    for p in project.patches(slide_id):
        k = where.get(p.image_id)
        probs = predictions.probs[k] if k is not None else None
        scored = probs is not None and probs.size > 0 and not np.isnan(probs).any()
        ds = float(slide.levels[p.level][2]) if p.level < len(slide.levels) else 1.0
        rows.append(_PatchResult(
            p.image_id, p.x, p.y, int(round(p.size * ds)), p.level, p.tissue,
            names.get(labels.get(p.image_id)),
            classes[int(np.argmax(probs))].name if scored and len(probs) == len(classes) else None,
            float(np.max(probs)) if scored else None,
            float(predictions.uncertainty[k]) if scored else None,
            tuple(float(v) for v in probs) if scored else (),
        ))
    return rows


def export_slide_csv(project: Project, slide_id: int, out: str | Path,
                     predictions: PatchPredictions | None = None, overwrite: bool = False) -> int:
    """One row per patch: id, position and size in level-0 pixels, label, prediction, probabilities."""
    out = check_file_target(Path(out), overwrite)
    class_names = project.class_names()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image_id", "slide", "x", "y", "width", "height", "level", "tissue", "label",
                     "predicted", "confidence", "uncertainty", *[f"p_{n}" for n in class_names]])
    slide_name = project.slide(slide_id).name
    rows = slide_results(project, slide_id, predictions)
    for r in rows:
        writer.writerow([r.image_id, slide_name, r.x, r.y, r.extent, r.extent, r.level,
                         _num(r.tissue), r.label or "", r.predicted or "", _num(r.confidence),
                         _num(r.uncertainty), *([_num(v) for v in r.probs] or [""] * len(class_names))])
    atomic_write_text(out, buffer.getvalue())
    return len(rows)


def geojson_document(project: Project, slide_id: int, predictions: PatchPredictions | None = None) -> dict:
    colours = {c.name: _rgb(c.colour) for c in project.classes()}
    class_names = project.class_names()
    features = []
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"atl-slide:{project.slide(slide_id).fingerprint}")
    for r in slide_results(project, slide_id, predictions):
        x0, y0, x1, y1 = r.x, r.y, r.x + r.extent, r.y + r.extent
        measurements = {"tissue": r.tissue, "confidence": r.confidence, "uncertainty": r.uncertainty,
                        **{f"p_{n}": v for n, v in zip(class_names, r.probs, strict=False)}}
        shown = r.label or r.predicted
        properties = {
            "objectType": "detection",
            "name": f"patch {r.image_id}",
            "isLocked": True,
            "measurements": {k: v for k, v in measurements.items() if v is not None},
            "atl": {"image_id": r.image_id, "label": r.label, "predicted": r.predicted,
                    "level": r.level},
        }
        if shown is not None:
            properties["classification"] = {"name": shown, "color": colours.get(shown, [128, 128, 128])}
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid5(namespace, str(r.image_id))),  # QuPath wants a UUID
            "geometry": {"type": "Polygon",
                         "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
            "properties": properties,
        })
    return {"type": "FeatureCollection", "features": features}


def export_slide_geojson(project: Project, slide_id: int, out: str | Path,
                         predictions: PatchPredictions | None = None, overwrite: bool = False) -> int:
    out = check_file_target(Path(out), overwrite)
    document = geojson_document(project, slide_id, predictions)
    atomic_write_text(out, json.dumps(document) + "\n")
    return len(document["features"])


def export_slides(project: Project, slide_ids: Sequence[int], folder: str | Path, fmt: str,
                  predictions: PatchPredictions | None = None, overwrite: bool = False) -> list[Path]:
    """One file per slide, named after it, in `folder`."""
    if fmt not in SLIDE_EXPORT_FORMATS:
        raise ExportError(f"Unknown format {fmt!r}; choose one of {', '.join(SLIDE_EXPORT_FORMATS)}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for slide_id in slide_ids:
        stem = safe_name(f"{Path(project.slide(slide_id).name).stem}-{slide_id}")
        out = folder / f"{stem}.{fmt}"
        write = export_slide_csv if fmt == "csv" else export_slide_geojson
        write(project, slide_id, out, predictions, overwrite=overwrite)
        written.append(out)
    return written


def _num(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def _rgb(colour: str | None) -> list[int]:
    text = (colour or "#808080").lstrip("#")
    try:
        return [int(text[i: i + 2], 16) for i in (0, 2, 4)]
    except ValueError:
        return [128, 128, 128]
