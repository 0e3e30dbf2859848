"""The report of one finished run as one self-contained HTML page.

Sections (their ids are stable; tests and links use them):
- ``overview``: model, dataset and evaluator with versions, settings and run conditions;
- ``metrics``: every summary metric;
- coco: ``per-category`` (AP, AP50, AP75, AR100 per category), ``pr-curves`` (precision-recall curves
  at IoU 0.50, 0.75 and averaged over 0.50:0.95, from the curves cmp stored in metrics.json) and
  ``worst`` (the lowest per-sample scores, ground truth and predictions drawn over the image);
- classification: ``per-class`` (precision, recall, F1, support), ``confusion``, ``roc`` (one-vs-rest,
  from the stored scores) and ``misclassified`` (images with true and predicted class).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from assay.metrics import Evaluator
from assay.metrics.coco import PER_SAMPLE_SCORE
from assay.report import html, overlay, plots
from assay.report.finished import FinishedRun
from assay.report.html import Html, section, table, tag

#: Images in the worst-samples and misclassified galleries unless told otherwise.
GALLERY = 12

T = TypeVar("T")


def build(run: FinishedRun, gallery: int = GALLERY) -> str:
    """The HTML text of ``run``'s report (reads every record and the gallery's shards)."""
    metrics = run.metrics
    sections = [_overview(run), _metrics(metrics)]
    kept: dict[str, tuple[dict, dict]] = {}
    if metrics["evaluator"] == "coco":
        scores = run.per_sample()
        worst = sorted(scores, key=lambda i: (scores[i], i))[:gallery]
        for sample_id, label, prediction in run.records():  # verifies every results file; keeps the drawn
            if sample_id in worst:
                kept[sample_id] = label, prediction
        sections += _coco(run, {i: scores[i] for i in worst}, kept)
    elif metrics["evaluator"] == "classification":
        evaluator = run.evaluate(kept)
        sections += _classification(run, evaluator, kept, gallery)
    else:  # a handler's own evaluate(): its numbers are all there is, once the results verify
        run.verify()
    model, dataset = metrics["model"], metrics["dataset"]
    title = f"{model['name']} on {dataset['name']}"
    subtitle = (f"assay report: model {model['name']}@{model['version']}, dataset {dataset['name']}@"
                f"{dataset['version']} ({dataset.get('samples')} samples), evaluator {metrics['evaluator']}")
    return html.page(title, subtitle, *sections)


def _overview(run: FinishedRun) -> Html:
    m = run.metrics
    rows = [["model", m["model"]["name"], m["model"]["version"], m["model"]["uri"]],
            ["dataset", m["dataset"]["name"], m["dataset"]["version"], m["dataset"]["uri"]]]
    engine = m.get("full", {}).get("engine")
    # a setting the job left unset is null in metrics.json; the evaluator then came from the model
    settings = [[k, f"{m['evaluator']} (the model's)" if k == "evaluator" and v is None
                 else json.dumps(v, separators=(", ", ": ")) if isinstance(v, dict) else v]  # coco's matching
                for k, v in m.get("settings", {}).items()]
    conditions = [[k, v] for c in m.get("runConditions") or [] if isinstance(c, dict) for k, v in c.items()]
    return section("overview", "Run",
                   table(["", "name", "version", "uri"], rows),
                   tag("p", f"evaluator {m['evaluator']}" + (f" ({engine})" if engine else "")
                       + f"; results in {run.output_uri}"),
                   tag("div", tag("div", tag("h3", "settings"), table(["setting", "value"], settings)),
                       tag("div", tag("h3", "run conditions"), table(["condition", "value"], conditions)),
                       class_="row"))


def _metrics(metrics: dict[str, Any]) -> Html:
    headline = metrics.get("headline", {}).get("name")
    summary = metrics["summary"]
    iou_types = metrics.get("full", {}).get("iou_types", []) if metrics["evaluator"] == "coco" else []
    if iou_types:  # COCO's 12 stats as rows, bbox and segm as columns: half the height
        stats = list(dict.fromkeys(name.split("/", 1)[1] for name in summary))
        rows = [[stat, *(summary.get(f"{t}/{stat}") for t in iou_types)] for stat in stats]
        return section("metrics", "Metrics", table(["metric", *iou_types], rows, class_="metrics"),
                       tag("p", f"headline: {headline}", class_="muted"))
    rows = [[f"{name} (headline)" if name == headline else name, value] for name, value in summary.items()]
    return section("metrics", "Metrics", table(["metric", "value"], rows, class_="metrics"))


# ------------------------------------------------------------------------------------------------ coco


def _coco(run: FinishedRun, worst: dict[str, float], kept: dict) -> list[Html]:
    """``worst``: the gallery's samples and their per-sample scores, lowest first."""
    full = run.metrics["full"]
    per_category, curves = [], []
    for iou_type in full.get("iou_types", []):
        rows = [[name, c["AP"], c["AP50"], c["AP75"], c["AR100"], c["num_ground_truth"]]
                for name, c in full[f"{iou_type}/per_category"].items()]
        per_category += [tag("h3", iou_type),
                         table(["category", "AP", "AP50", "AP75", "AR100", "ground truth"], rows)]
        png = plots.pr_curves(full[f"{iou_type}/precision_curves"], full["recall_thresholds"], iou_type)
        curves.append(html.image(png, "image/png", f"{iou_type} precision-recall curves", class_="plot"))
    images = run.images(set(worst))
    figures = []
    for sample_id in worst:
        label, prediction = kept[sample_id]
        objects, detections = len(label.get("objects", [])), len(prediction.get("boxes", []))
        caption = (f"{sample_id}: score {worst[sample_id]:.3f}; {_count(objects, 'object')}, "
                   f"{_count(detections, 'detection')}")
        drawn, note = _drawn(images, sample_id,
                             lambda data, label=label, prediction=prediction: overlay.detections(data, label, prediction))
        if drawn is not None:
            drawn, hidden = drawn
            caption += f" ({hidden} below score 0.5 not drawn)" if hidden else ""
        figures.append(_figure(drawn, sample_id, caption, note))
    legend = tag("p", f"The {len(worst)} samples with the lowest per-sample score: {PER_SAMPLE_SCORE}. "
                 "Drawn over each image: ", tag("span", "ground truth", class_="legend-gt"), " and ",
                 tag("span", "predictions (score at least 0.5)", class_="legend-pred"), ".")
    return [section("per-category", "Per category", *per_category),
            section("pr-curves", "Precision-recall curves",
                    tag("p", "COCOeval's interpolated precision at 101 recall points (area all, 100 detections).",
                        class_="muted"), *curves),
            section("worst", "Worst samples", legend, tag("div", *figures, class_="gallery"))]


# -------------------------------------------------------------------------------------- classification


def _classification(run: FinishedRun, evaluator: Evaluator, kept: dict, gallery: int) -> list[Html]:
    from assay.metrics.classification import roc_curve

    full = run.metrics["full"]
    classes = full["classes"]
    rows = [[name, c["precision"], c["recall"], c["f1"], c["support"]] for name, c in full["per_class"].items()]
    rows += [[f"{avg} average", full[avg]["precision"], full[avg]["recall"], full[avg]["f1"], None]
             for avg in ("macro", "micro")]
    confusion = html.image(plots.confusion_matrix(full["confusion_matrix"], classes), "image/png",
                           "confusion matrix", class_="plot")
    labels = [kept[i] for i in sorted(kept)]
    if all(p.get("scores") is not None for _, p in labels):
        y_true = np.array([int(lab["label"]) for lab, _ in labels])
        scores = np.stack([np.asarray(p["scores"], dtype=np.float64) for _, p in labels])
        auc = (full.get("roc_auc") or {}).get("per_class", {})
        curves = {name: (*curve, auc.get(name)) for k, name in enumerate(classes)
                  if (curve := roc_curve(y_true == k, scores[:, k])) is not None}
        roc: Html = html.image(plots.roc_curves(curves), "image/png", "ROC curves", class_="plot")
    else:
        roc = tag("p", "The predictions carry no per-class scores, so there is no ROC curve.")
    wrong = sorted(i for i, s in evaluator.per_sample().items() if s < 1.0)
    shown = wrong[:gallery]
    images = run.images(set(shown))
    figures = []
    for sample_id in shown:
        label, prediction = kept[sample_id]
        caption = (f"{sample_id}: true {classes[int(label['label'])]}, "
                   f"predicted {classes[int(np.asarray(prediction['label']))]}")
        thumb, note = _drawn(images, sample_id, lambda data: overlay.jpeg(overlay.fit(overlay.open_rgb(data))))
        figures.append(_figure(thumb, sample_id, caption, note))
    return [section("per-class", "Per class", table(["class", "precision", "recall", "F1", "support"], rows)),
            section("confusion", "Confusion matrix", confusion),
            section("roc", "ROC curves", roc),
            section("misclassified", "Misclassified samples",
                    tag("p", f"{len(wrong)} of {len(kept)} samples misclassified; the first {len(shown)} by id."),
                    tag("div", *figures, class_="gallery"))]


def _drawn(images: dict[str, tuple[str, bytes]], sample_id: str,
           draw: Callable[[bytes], T]) -> tuple[T, None] | tuple[None, str]:
    """(``draw(image bytes)``, None), or (None, why there is no picture): one image that does not decode
    (truncated, not an image) leaves its caption alone in the gallery instead of failing the report."""
    if sample_id not in images:
        return None, "no image in the sample"
    ext, data = images[sample_id]
    try:
        return draw(data), None
    except Exception as exc:  # noqa: BLE001 - PIL: OSError (truncated), UnidentifiedImageError, DecompressionBombError
        import logging

        logging.getLogger("assay.report").warning("sample %r: its %s image (%d bytes) does not decode: %s",
                                                  sample_id, ext, len(data), exc)
        return None, f"its {ext} image ({len(data)} bytes) does not decode: {str(exc).split(' <_io.')[0]}"


def _figure(jpeg: bytes | None, sample_id: str, caption: str, note: str | None = None) -> Html:
    """A gallery entry: the image and its caption, or the caption alone (and why) for a sample with no picture."""
    if jpeg is None:
        return tag("figure", tag("figcaption", f"{caption} ({note or 'no image in the sample'})"))
    return tag("figure", html.image(jpeg, "image/jpeg", sample_id), tag("figcaption", caption))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
