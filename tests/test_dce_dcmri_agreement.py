"""Agreement of the extended Tofts fit with an independent implementation, ``dcmri``.

``dcmri.Tissue`` (kinetics "HF" = extended Tofts, fast water exchange, steady-state
SPGR signal) fits the same curves in the same test. dcmri fits signals, so each
concentration curve is turned into an SPGR signal with the parameters given to dcmri
(noise-free, so nothing is lost). The agreement table is printed (``pytest -s``) and the
two implementations must agree with each other, and with the truth, within the OSIPI
tolerances (Ktrans 0.005 /min + 10 %, ve 0.05, vp 0.025).
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest

from analyzers.dce.aif import parker_aif
from analyzers.dce.t1 import spgr_signal
from analyzers.dce.tofts import extended_tofts, fit_extended_tofts

dc = pytest.importorskip("dcmri", reason="dcmri (PyPI) is the independent reference implementation")

OSIPI = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference-data" / "osipi_dce_dsc"
HCT, R1_MM, T10, TR, FA = 0.45, 5.0, 1.0, 0.005, 25.0
TOL = {"Ktrans": (0.005, 0.1), "ve": (0.05, 0.0), "vp": (0.025, 0.0)}


def _dcmri_fit(t: np.ndarray, cp: np.ndarray, conc: np.ndarray) -> tuple[float, float, float]:
    """(Ktrans /min, ve, vp) from dcmri's own fitter on the SPGR signal of ``conc``."""
    signal = spgr_signal(1.0, 1.0 / T10 + R1_MM * conc, TR, FA)
    tissue = dc.Tissue("HF", "FF", sequence="SS", ca=cp * (1 - HCT) / 1000.0, t=t, H=HCT,
                       r1=R1_MM * 1000.0, R10=1.0 / T10, FA=FA, TR=TR, S0=1.0)
    tissue.train(t, signal, init_s0=False)
    return float(tissue.PS) * 60.0, float(tissue.vi), float(tissue.vb) * (1 - HCT)


def _cases() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]]:
    cases = []
    t = np.arange(0.0, 300.0, 2.0)
    cp = parker_aif(t, delay=20.0, hematocrit=HCT)
    for k, v, p in itertools.product([0.02, 0.1, 0.35], [0.1, 0.5], [0.005, 0.05]):
        conc = extended_tofts(t, cp, k, v, p)
        cases.append((f"own K{k} ve{v} vp{p}", t, cp, conc, (k, v, p)))
    path = OSIPI / "dce" / "dce_DRO_data_extended_tofts.csv"
    if path.is_file():
        with path.open(encoding="utf-8-sig") as handle:
            for row in csv.DictReader(handle):
                if row["label"].endswith("highSNR"):
                    arr = [np.array(row[c].split(), float) for c in ("t", "ca", "C")]
                    truth = (float(row["Ktrans"]), float(row["ve"]), float(row["vp"]))
                    cases.append((f"OSIPI {row['label']}", arr[0], arr[1], arr[2], truth))
    return cases


def _ok(measured: float, reference: float, name: str) -> bool:
    atol, rtol = TOL[name]
    return abs(measured - reference) <= atol + rtol * abs(reference)


def test_agreement_with_dcmri_on_the_same_curves() -> None:
    cases = _cases()
    rows = []
    for label, t, cp, conc, truth in cases:
        ours = fit_extended_tofts(t, cp, conc)
        mine = (float(ours.ktrans[0]), float(ours.ve[0]), float(ours.vp[0]))
        theirs = _dcmri_fit(t, cp, conc)
        rows.append((label, truth, mine, theirs))
    header = (f"{'curve':34s} | {'Ktrans true/ours/dcmri (/min)':32s} | "
              f"{'ve true/ours/dcmri':24s} | {'vp true/ours/dcmri':26s}")
    print("\n" + header + "\n" + "-" * len(header))
    for label, truth, mine, theirs in rows:
        cells = [f"{a:.4f}/{b:.4f}/{c:.4f}" for a, b, c in zip(truth, mine, theirs, strict=True)]
        print(f"{label:34s} | {cells[0]:32s} | {cells[1]:24s} | {cells[2]:26s}")
    if not any(label.startswith("OSIPI") for label, *_ in rows):
        print(f"(OSIPI curves not found at {OSIPI}; own curves only)")
    for label, truth, mine, theirs in rows:
        for i, name in enumerate(("Ktrans", "ve", "vp")):
            assert _ok(mine[i], theirs[i], name), f"{label} {name}: ours {mine[i]} dcmri {theirs[i]}"
            assert _ok(mine[i], truth[i], name), f"{label} {name}: ours {mine[i]} true {truth[i]}"
            assert _ok(theirs[i], truth[i], name), f"{label} {name}: dcmri {theirs[i]} true"
