"""Training reports: ROC, calibration and decision-curve plots and one HTML page.

The plots are the ones the papers show: ROC curves of the pooled out-of-fold
predictions with a patient-level bootstrap band (dural-lesion DSC study),
calibration curves and decision curves (meningioma-grade nomogram study).
Figures are drawn with matplotlib's object API on the Agg canvas (no display,
no global pyplot state). :func:`write_report` writes each figure as a PNG and
an HTML page that embeds them as data URIs, so the page works offline and
without any CDN; the PNGs beside it are for slides and the model folder.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analyzers._shared.modelcard import ModelCard
from analyzers._shared.stats import (
    CalibrationCurve,
    DecisionCurve,
    DeLongResult,
    Evaluation,
    NestedCVResult,
    RocBand,
    UnivariateAUC,
    roc_curve_band,
)
from analyzers.contract import NOT_FOR_CLINICAL_USE

__all__ = [
    "ReportError",
    "ReportPaths",
    "calibration_figure",
    "dca_figure",
    "figure_png",
    "roc_figure",
    "write_report",
]


class ReportError(ValueError):
    """The report cannot be drawn from what was given."""


def _new_figure() -> Figure:
    fig = Figure(figsize=(5.5, 5.0), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _check_named(items: Mapping[str, Any], what: str) -> None:
    if not items:
        raise ReportError(f"no {what} to plot")


def roc_figure(bands: Mapping[str, RocBand], title: str = "ROC curve") -> Figure:
    """ROC curves, each with its bootstrap band and AUC (95 % CI) in the legend."""
    _check_named(bands, "ROC curves")
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, band in bands.items():
        (line,) = ax.plot(band.fpr, band.tpr, lw=2, label=f"{name}: AUC {band.auc.format()}")
        ax.fill_between(band.fpr, band.lower, band.upper, color=line.get_color(), alpha=0.2, lw=0)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=7)
    return fig


def calibration_figure(curves: Mapping[str, CalibrationCurve], title: str = "Calibration") -> Figure:
    """Observed fraction against mean predicted probability per bin, with the ideal diagonal."""
    _check_named(curves, "calibration curves")
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="ideal")
    for name, c in curves.items():
        ax.plot(c.mean_predicted, c.observed_fraction, marker="o", lw=1.5, label=name)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="predicted probability",
        ylabel="observed fraction positive",
        title=title,
    )
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=7)
    return fig


def dca_figure(curves: Mapping[str, DecisionCurve], title: str = "Decision curve") -> Figure:
    """Net benefit of each model against treat-all and treat-none (Vickers & Elkin 2006)."""
    _check_named(curves, "decision curves")
    fig = _new_figure()
    ax = fig.add_subplot()
    first = next(iter(curves.values()))
    for name, c in curves.items():
        ax.plot(c.thresholds, c.net_benefit, lw=1.8, label=name)
    ax.plot(first.thresholds, first.treat_all, color="grey", lw=1, label="treat all")
    ax.plot(first.thresholds, first.treat_none, color="black", lw=1, ls="--", label="treat none")
    top = max(float(np.max(c.net_benefit)) for c in curves.values())
    top = max(top, float(np.max(first.treat_all)), 0.01)
    ax.set(
        xlim=(0, 1),
        ylim=(-0.05 * top - 0.02, top * 1.15),
        xlabel="threshold probability",
        ylabel="net benefit",
        title=title,
    )
    ax.legend(loc="upper right", fontsize=7)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (deterministic: no creation-time metadata)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


@dataclass(frozen=True)
class ReportPaths:
    """Files written by :func:`write_report`."""

    html: Path
    roc_png: Path
    calibration_png: Path
    dca_png: Path


def _fmt(v: float | None, decimals: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{decimals}f}"


def _range(lower: float, upper: float) -> str:
    # A hyphen between two numbers misreads when one of them is negative.
    sep = " to " if min(lower, upper) < 0 else "-"
    return f"{_fmt(lower)}{sep}{_fmt(upper)}"


def _evaluation_rows(evaluations: Mapping[str, Evaluation]) -> str:
    head = (
        "<tr><th>model</th><th>cases / patients</th><th>AUC (95% CI)</th><th>Brier</th>"
        "<th>cal. slope</th><th>cal. intercept</th><th>H-L p</th><th>threshold</th>"
        "<th>sensitivity</th><th>specificity</th><th>PPV</th><th>NPV</th><th>accuracy</th></tr>"
    )
    rows = []
    for name, ev in evaluations.items():
        at = ev.at_threshold
        ci = ev.at_threshold_ci

        def with_ci(key: str, value: float, ci: Any = ci) -> str:
            c = ci[key]
            if not (math.isfinite(c.lower) and math.isfinite(c.upper)):
                return _fmt(value)
            return f"{_fmt(value)} ({_range(c.lower, c.upper)})"

        hl = ev.hosmer_lemeshow
        cells = [
            html.escape(name),
            f"{ev.n_cases} / {ev.n_patients}",
            html.escape(ev.auc.format()),
            _fmt(ev.brier),
            _fmt(ev.calibration_fit.slope),
            _fmt(ev.calibration_fit.intercept),
            _fmt(hl.p_value) if hl is not None else "n/a",
            _fmt(at.threshold),
            with_ci("sensitivity", at.sensitivity),
            with_ci("specificity", at.specificity),
            with_ci("ppv", at.ppv),
            with_ci("npv", at.npv),
            with_ci("accuracy", at.accuracy),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _delong_rows(results: Mapping[tuple[str, str], DeLongResult]) -> str:
    head = (
        "<tr><th>model A</th><th>model B</th><th>AUC A</th><th>AUC B</th>"
        "<th>difference (95% CI)</th><th>z</th><th>p</th></tr>"
    )
    rows = [
        "<tr>"
        + "".join(
            f"<td>{c}</td>"
            for c in (
                html.escape(a),
                html.escape(b),
                _fmt(r.auc_a),
                _fmt(r.auc_b),
                f"{_fmt(r.difference)} ({_range(r.ci_lower, r.ci_upper)})",
                _fmt(r.z, 2),
                _fmt(r.p_value, 4),
            )
        )
        + "</tr>"
        for (a, b), r in results.items()
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def _folds_table(results: Mapping[str, NestedCVResult]) -> str:
    head = (
        "<tr><th>model</th><th>scheme</th><th>fold</th><th>train cases</th><th>test cases</th>"
        "<th>test patients</th><th>AUC</th><th>Brier</th><th>inner AUC</th><th>hyper-parameters</th></tr>"
    )
    rows = []
    for name, res in results.items():
        for f in res.folds:
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in f.best_params.items())
            cells = [
                html.escape(name),
                html.escape(res.scheme),
                str(f.fold),
                str(f.n_train),
                str(f.n_test),
                str(len(f.test_groups)),
                _fmt(f.auc),
                _fmt(f.brier),
                _fmt(f.inner_auc),
                html.escape(params or "none"),
            ]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _univariate_table(items: Sequence[UnivariateAUC]) -> str:
    head = "<tr><th>feature</th><th>direction</th><th>AUC (95% CI)</th></tr>"
    rows = [
        f"<tr><td>{html.escape(u.feature)}</td><td>{html.escape(u.direction)} values favour positive</td>"
        f"<td>{html.escape(u.auc.format())}</td></tr>"
        for u in items
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def _dict_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    head = "<tr>" + "".join(f"<th>{html.escape(str(k))}</th>" for k in keys) + "</tr>"

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return _fmt(v)
        return html.escape("n/a" if v is None else str(v))

    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(k))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


_CSS = """
body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
.warn{background:#fde8e8;border:2px solid #c0392b;padding:.8em;font-weight:bold}
table{border-collapse:collapse;margin:1em 0;font-size:.85em}
td,th{border:1px solid #bbb;padding:.3em .5em;text-align:right}
th{background:#f0f0f0} td:first-child,th:first-child{text-align:left}
.figs img{width:32%;min-width:300px}
"""


def write_report(
    folder: Path,
    *,
    title: str,
    evaluations: Mapping[str, Evaluation],
    roc_bands: Mapping[str, RocBand] | None = None,
    comparison_table: Sequence[Mapping[str, Any]] | None = None,
    delong: Mapping[tuple[str, str], DeLongResult] | None = None,
    cv_results: Mapping[str, NestedCVResult] | None = None,
    univariate: Sequence[UnivariateAUC] | None = None,
    model_card: ModelCard | None = None,
    notes: Sequence[str] = (),
    n_boot: int = 1000,
    seed: int = 0,
    stem: str = "report",
) -> ReportPaths:
    """Write ``<stem>.html`` with embedded ROC, calibration and DCA plots, and the PNGs beside it.

    Parameters
    ----------
    folder:
        Output folder (created when missing).
    title:
        Page title.
    evaluations:
        ``{model name: Evaluation}``, e.g. the pooled OOF evaluation of each model.
    roc_bands:
        Precomputed ROC bands; computed from the evaluations (patient-level
        bootstrap, ``n_boot``, ``seed``) when None.
    comparison_table:
        Optional rows (e.g. :meth:`ModelComparison.table`) shown as a table.
    delong:
        Optional DeLong results (e.g. :func:`delong_pairwise`) shown as a table.
    cv_results:
        Optional nested-CV results by model; their per-fold metrics and chosen
        hyper-parameters are tabulated.
    univariate:
        Optional univariate AUCs (e.g. of rCBV and rCBF) shown as a table.
    model_card:
        Optional card whose data, validation and references are summarised.
    notes:
        Extra paragraphs (plain text).
    """
    if not evaluations:
        raise ReportError("no evaluations to report")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bands = (
        dict(roc_bands)
        if roc_bands is not None
        else {
            name: roc_curve_band(ev.y, ev.probability, ev.groups, n_boot=n_boot, seed=seed)
            for name, ev in evaluations.items()
        }
    )
    figures = {
        "roc": roc_figure(bands),
        "calibration": calibration_figure({n: e.calibration for n, e in evaluations.items()}),
        "dca": dca_figure({n: e.dca for n, e in evaluations.items()}),
    }
    pngs = {}
    for key, fig in figures.items():
        data = figure_png(fig)
        path = folder / f"{stem}_{key}.png"
        path.write_bytes(data)
        pngs[key] = (path, base64.b64encode(data).decode("ascii"))

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="warn">{html.escape(NOT_FOR_CLINICAL_USE)}</p>',
    ]
    if model_card is not None:
        d = model_card.data
        parts += [
            "<h2>Model</h2>",
            f"<p>{html.escape(model_card.name)} {html.escape(model_card.version)} "
            f"(analyzer <code>{html.escape(model_card.analyzer)}</code>): "
            f"{html.escape(model_card.model_description)}</p>",
            f"<p>Data: {html.escape(d.source)}; {d.n_cases} cases from {d.n_patients} patients, "
            f"{d.n_positive} {html.escape(d.positive_label)}, "
            f"{d.n_negative} {html.escape(d.negative_label)}.</p>",
            f"<p>Validation: {html.escape(model_card.validation)}</p>",
            "<p>Method follows:</p><ul>"
            + "".join(f"<li>{html.escape(r)}</li>" for r in model_card.references)
            + "</ul>",
        ]
    parts += ["<h2>Performance</h2>", _evaluation_rows(evaluations)]
    if comparison_table:
        parts += ["<h2>Model comparison</h2>", _dict_table(comparison_table)]
    if delong:
        parts += ["<h2>DeLong test</h2>", _delong_rows(delong)]
    if univariate:
        parts += ["<h2>Univariate AUCs</h2>", _univariate_table(univariate)]
    if cv_results:
        parts += ["<h2>Outer folds</h2>", _folds_table(cv_results)]
    parts.append('<h2>Plots</h2><div class="figs">')
    for key, label in (("roc", "ROC curve"), ("calibration", "calibration"), ("dca", "decision curve")):
        parts.append(f'<img alt="{label}" src="data:image/png;base64,{pngs[key][1]}">')
    parts.append("</div>")
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts.append(f'<p class="warn">{html.escape(NOT_FOR_CLINICAL_USE)}</p></body></html>')
    out = folder / f"{stem}.html"
    out.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return ReportPaths(
        html=out,
        roc_png=pngs["roc"][0],
        calibration_png=pngs["calibration"][0],
        dca_png=pngs["dca"][0],
    )
