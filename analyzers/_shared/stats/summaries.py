"""Descriptive summaries and paired / two-sample tests as the papers' tables use them.

* mean ± SD and median (Q1-Q3) per metric (the brain-metastasis nnU-Net study's
  tables; the DSC study reports medians with first and third quartiles);
* Wilcoxon signed-rank test between two models evaluated on the same patients
  (issue: ``pacsnode evaluate brainmets``), and the two-sided Mann-Whitney U test
  the brain-metastasis study used between unpaired groups;
* Cohen's d, the DSC study's effect size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

from analyzers._shared.stats._validation import StatsInputError

__all__ = [
    "PairedTestResult",
    "Summary",
    "TwoSampleTestResult",
    "cohens_d",
    "mann_whitney_u",
    "model_summary_table",
    "summarize",
    "wilcoxon_signed_rank",
]

Alternative = Literal["two-sided", "less", "greater"]


def _values(x: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise StatsInputError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class Summary:
    """Mean, SD (n - 1), median and quartiles of the finite values.

    ``n_missing`` counts the NaN values left out (e.g. F1 of a patient with no
    lesion and no prediction).
    """

    n: int
    n_missing: int
    mean: float
    sd: float
    median: float
    q1: float
    q3: float

    def mean_sd(self, decimals: int = 3) -> str:
        """``"0.798 ± 0.193"``."""
        return f"{self.mean:.{decimals}f} ± {self.sd:.{decimals}f}"

    def median_iqr(self, decimals: int = 3) -> str:
        """``"0.812 (0.700-0.905)"``: median (first quartile-third quartile)."""
        sep = " to " if min(self.q1, self.q3) < 0 else "-"
        return f"{self.median:.{decimals}f} ({self.q1:.{decimals}f}{sep}{self.q3:.{decimals}f})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def summarize(values: ArrayLike) -> Summary:
    """Summarise the finite values of ``values`` (NaN are counted and left out).

    Quartiles use numpy's default (linear, "type 7") interpolation.
    """
    arr = _values(values, "values")
    ok = arr[np.isfinite(arr)]
    if ok.size == 0:
        nan = float("nan")
        return Summary(0, int(arr.size), nan, nan, nan, nan, nan)
    q1, med, q3 = np.quantile(ok, [0.25, 0.5, 0.75])
    return Summary(
        n=int(ok.size),
        n_missing=int(arr.size - ok.size),
        mean=float(ok.mean()),
        sd=float(ok.std(ddof=1)) if ok.size > 1 else 0.0,
        median=float(med),
        q1=float(q1),
        q3=float(q3),
    )


@dataclass(frozen=True)
class PairedTestResult:
    """Wilcoxon signed-rank test of ``a - b`` on paired values.

    ``n_pairs`` counts the pairs used (both finite); ``median_difference`` is the
    median of ``a - b`` over them.
    """

    statistic: float
    p_value: float
    n_pairs: int
    median_difference: float
    alternative: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def wilcoxon_signed_rank(a: ArrayLike, b: ArrayLike, alternative: Alternative = "two-sided") -> PairedTestResult:
    """Wilcoxon signed-rank test between two models' per-patient values.

    Pairs with a missing value on either side are dropped; zero differences are
    dropped too (Wilcoxon's original treatment, scipy ``zero_method="wilcox"``).
    The exact distribution is used for small samples without ties, the normal
    approximation otherwise (scipy's ``method="auto"``).
    """
    x = _values(a, "a")
    z = _values(b, "b")
    if x.size != z.size:
        raise StatsInputError(f"a and b must pair up: {x.size} vs {z.size} values")
    ok = np.isfinite(x) & np.isfinite(z)
    d = x[ok] - z[ok]
    if np.count_nonzero(d) == 0:
        raise StatsInputError("every paired difference is zero or missing; the test is undefined")
    res = sps.wilcoxon(x[ok], z[ok], zero_method="wilcox", alternative=alternative)
    return PairedTestResult(
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        n_pairs=int(ok.sum()),
        median_difference=float(np.median(d)),
        alternative=alternative,
    )


@dataclass(frozen=True)
class TwoSampleTestResult:
    """Mann-Whitney U test of two independent samples."""

    statistic: float
    p_value: float
    n_a: int
    n_b: int
    alternative: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def mann_whitney_u(a: ArrayLike, b: ArrayLike, alternative: Alternative = "two-sided") -> TwoSampleTestResult:
    """Mann-Whitney U test (U of ``a``), NaN values left out."""
    x = _values(a, "a")
    z = _values(b, "b")
    x, z = x[np.isfinite(x)], z[np.isfinite(z)]
    if x.size == 0 or z.size == 0:
        raise StatsInputError("both samples need at least one finite value")
    res = sps.mannwhitneyu(x, z, alternative=alternative)
    return TwoSampleTestResult(float(res.statistic), float(res.pvalue), int(x.size), int(z.size), alternative)


def cohens_d(a: ArrayLike, b: ArrayLike) -> float:
    """Cohen's d of ``a`` versus ``b`` with the pooled SD (n - 1 denominators)."""
    x = _values(a, "a")
    z = _values(b, "b")
    x, z = x[np.isfinite(x)], z[np.isfinite(z)]
    if x.size < 2 or z.size < 2:
        raise StatsInputError("each sample needs at least two finite values")
    pooled = ((x.size - 1) * x.var(ddof=1) + (z.size - 1) * z.var(ddof=1)) / (x.size + z.size - 2)
    if pooled == 0:
        raise StatsInputError("both samples are constant; Cohen's d is undefined")
    return float((x.mean() - z.mean()) / np.sqrt(pooled))


def model_summary_table(
    per_patient: Mapping[str, Mapping[str, ArrayLike]],
    pairs: Sequence[tuple[str, str]] = (),
    decimals: int = 3,
) -> list[dict[str, Any]]:
    """Per-metric table of several models as in the brain-metastasis study's tables.

    Parameters
    ----------
    per_patient:
        ``{model: {metric: per-patient values}}``; every model lists the same
        patients in the same order (NaN where a value is undefined).
    pairs:
        ``(model_a, model_b)`` pairs to compare with the Wilcoxon signed-rank test.
    decimals:
        Decimals of the formatted cells.

    Returns
    -------
    list of dict
        One row per metric: ``metric``, then ``"<model> mean ± SD"`` and
        ``"<model> median (IQR)"`` for each model, then ``"p <a> vs <b>"`` for each
        pair (None when the test is undefined, e.g. all differences zero).
    """
    if not per_patient:
        raise StatsInputError("no models given")
    models = list(per_patient)
    metrics = list(per_patient[models[0]])
    for m in models[1:]:
        if list(per_patient[m]) != metrics:
            raise StatsInputError(f"model {m!r} does not report the same metrics as {models[0]!r}")
    for a, b in pairs:
        if a not in per_patient or b not in per_patient:
            raise StatsInputError(f"unknown model in pair ({a!r}, {b!r})")
    rows = []
    for metric in metrics:
        row: dict[str, Any] = {"metric": metric}
        for m in models:
            summary = summarize(per_patient[m][metric])
            row[f"{m} mean ± SD"] = summary.mean_sd(decimals)
            row[f"{m} median (IQR)"] = summary.median_iqr(decimals)
        for a, b in pairs:
            try:
                row[f"p {a} vs {b}"] = wilcoxon_signed_rank(per_patient[a][metric], per_patient[b][metric]).p_value
            except StatsInputError:
                row[f"p {a} vs {b}"] = None
        rows.append(row)
    return rows
