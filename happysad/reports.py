"""Pictures and the HTML page of a report: confusion matrix, ROC and PR curves, threshold sweep, image grids
(training samples, worst mistakes) and training curves.

Figures are built with matplotlib's object API (`matplotlib.figure.Figure`, rendered by Agg), never pyplot,
so nothing depends on a display or on pyplot's global state; the same figures go to PNG files, to the HTML
page and, as images, to TensorBoard. matplotlib (half a second to import) loads when a first figure is drawn.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from happysad.runtime import deferred

if TYPE_CHECKING:
    from matplotlib.figure import Figure

matplotlib_figure = deferred("matplotlib.figure", after_tensorflow=False)
matplotlib_ticker = deferred("matplotlib.ticker", after_tensorflow=False)


def png_bytes(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def confusion_matrix_figure(matrix, class_names, title: str = "confusion matrix") -> Figure:
    """Colours show each true class's share (rows sum to 1); cells show the count and that share."""
    matrix = np.asarray(matrix, dtype=int)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    size = 2.2 + 0.7 * len(class_names)
    figure = matplotlib_figure.Figure(figsize=(size + 1, size))
    axis = figure.subplots()
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of true class")
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45 if len(class_names) > 3 else 0, ha="right"
                    if len(class_names) > 3 else "center")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    for row in range(len(class_names)):
        for column in range(len(class_names)):
            axis.text(column, row, f"{matrix[row, column]}\n{shares[row, column]:.0%}", ha="center",
                      va="center", color="white" if shares[row, column] > 0.5 else "black")
    figure.tight_layout()
    return figure


def rate_axes(title: str, xlabel: str, ylabel: str) -> tuple:
    """(figure, axis) for a curve of two rates: square, both axes from 0 to 1."""
    figure = matplotlib_figure.Figure(figsize=(4.5, 4.5))
    axis = figure.subplots()
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    return figure, axis


def roc_figure(fpr, tpr, auc, positive: str) -> Figure:
    figure, axis = rate_axes(f"ROC, positive class: {positive}",
                             f"false positive rate (not {positive}, called {positive})",
                             f"true positive rate ({positive} found)")
    axis.plot(fpr, tpr, drawstyle="default", label=f"AUC {auc:.3f}" if auc is not None else "AUC n/a")
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    axis.legend(loc="lower right")
    figure.tight_layout()
    return figure


def pr_figure(precision, recall, average_precision, positive: str, prevalence: float) -> Figure:
    figure, axis = rate_axes(f"precision-recall, positive class: {positive}", f"recall ({positive})",
                             f"precision ({positive})")
    label = f"AP {average_precision:.3f}" if average_precision is not None else "AP n/a"
    axis.plot(recall, precision, drawstyle="steps-post", label=label)
    axis.axhline(prevalence, linestyle=":", color="grey", label=f"chance ({prevalence:.2f})")
    axis.legend(loc="lower left")
    figure.tight_layout()
    return figure


def threshold_figure(sweep: list, positive: str, threshold: float) -> Figure:
    """Precision, recall and F1 of the positive class and the macro F1 against the decision threshold."""
    figure = matplotlib_figure.Figure(figsize=(6, 4))
    axis = figure.subplots()
    thresholds = [row["threshold"] for row in sweep]
    for key, label in (("precision", f"precision ({positive})"), ("recall", f"recall ({positive})"),
                       ("f1", f"F1 ({positive})"), ("macro_f1", "macro F1")):
        axis.plot(thresholds, [row[key] for row in sweep], label=label)
    axis.axvline(threshold, linestyle=":", color="black", label=f"threshold in use ({threshold:.2f})")
    axis.set_xlabel(f"threshold on p({positive})")
    axis.set_ylim(0, 1.02)
    axis.set_title("threshold sweep")
    axis.legend(loc="lower center", fontsize="small")
    figure.tight_layout()
    return figure


def reliability_figure(before: list, after: list, errors: tuple) -> Figure:
    """The share right against the mean confidence per bin (calibration.reliability), before and after the
    calibration: on the diagonal, a probability means what it says."""
    figure = matplotlib_figure.Figure(figsize=(5, 4.5))
    axis = figure.subplots()
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    for rows, name, error, style in ((before, "uncalibrated", errors[0], "o--"), (after, "calibrated", errors[1], "s-")):
        if rows is None:
            continue
        kept = [row for row in rows if row["count"]]
        axis.plot([row["confidence"] for row in kept], [row["accuracy"] for row in kept], style,
                  label=f"{name} (ECE {error:.3f})")
    low = min(row["low"] for row in after if row["count"])
    axis.set_xlim(low - 0.02, 1.01)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("confidence (highest probability)")
    axis.set_ylabel("share right")
    axis.set_title("reliability diagram")
    axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def image_grid_figure(pixels, titles, colors=None, columns: int = 4, title: str = "") -> Figure:
    """Images in [0, 1] with a (possibly multi-line) caption under each, `columns` per row: the first three
    channels of each, the picture's RGB (a model reading the face beside it has the face's after them)."""
    count = len(pixels)
    columns = max(1, min(columns, count))
    rows = max(1, -(-count // columns))
    figure = matplotlib_figure.Figure(figsize=(max(2.4 * columns, 4.8 if title else 0), 3.0 * rows + (0.4 if title else 0)))
    axes = np.atleast_1d(figure.subplots(rows, columns)).reshape(-1)
    for index, axis in enumerate(axes):
        axis.axis("off")
        if index < count:
            axis.imshow(np.clip(np.asarray(pixels[index])[..., :3], 0, 1))
            axis.set_title(titles[index], fontsize=8, color=(colors or ["black"] * count)[index])
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def curves_figure(history: dict, held_out: str = "validation") -> Figure:
    """One panel per metric Keras logged (loss, accuracy, ...), training against validation (or what else
    `held_out` names: the folds of a cross-validation)."""
    names = [name for name in ("loss", "accuracy", "precision", "recall", "auc") if history.get(name)]
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure = matplotlib_figure.Figure(figsize=(4 * columns, 3.4 * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns)).reshape(-1)
    for axis in axes[len(names):]:
        axis.axis("off")
    for axis, name in zip(axes, names):
        epochs = range(1, len(history[name]) + 1)
        axis.plot(epochs, history[name], label="train")
        if history.get(f"val_{name}"):
            axis.plot(range(1, len(history[f"val_{name}"]) + 1), history[f"val_{name}"], label=held_out)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(matplotlib_ticker.MaxNLocator(integer=True))
        axis.set_title(name)
        axis.legend()
    figure.tight_layout()
    return figure


def plot_curves(history: dict, path, held_out: str = "validation") -> None:
    Path(path).write_bytes(png_bytes(curves_figure(history, held_out)))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; border: 1px solid #eee; margin: 0.3em 0; }}
.figures {{ display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }}
pre {{ background: #f6f6f6; padding: 0.6em; overflow-x: auto; }}
</style></head><body>
<h1>{title}</h1>
{body}
</body></html>
"""


def table_html(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def image_html(encoded: bytes, alt: str, mime: str = "image/png") -> str:
    """The picture (PNG or JPEG bytes) embedded as base64, so the page is one self-contained file."""
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{base64.b64encode(encoded).decode()}">'


def write_page(path, title: str, sections: list) -> Path:
    """sections: (heading, html) pairs; headings are escaped, the html is inserted as given."""
    body = "\n".join(f"<h2>{html.escape(heading)}</h2>\n{content}" for heading, content in sections)
    path = Path(path)
    path.write_text(PAGE.format(title=html.escape(title), body=body), encoding="utf-8")
    return path
