"""The DSC reference object through the chain a hospital runs: storescu → node → Orthanc.

Two cases of :mod:`bench.dro.dsc_object` at SNR 50 (no leak; T1-dominant leak), 32
patches each (MTT 2-12 s, CBV 1-8 ml/100 g, exponential and gamma residues), sent
by dcmtk ``storescu`` to a node with the shipped ``dsc`` route (oSVD) and a second
route with ``method = "bayes"``; the Parametric Maps are fetched from Orthanc and
scored per patch with the OSIPI tolerances (``python -m bench.dro.dsc_bench`` runs
every leak and SNR; its table is in docs/analyzers/dsc.md).
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.dro.dsc_bench import run_cases
from bench.dro.dsc_object import make_case
from bench.dro.harness import peers_missing

pytestmark = [pytest.mark.peers, pytest.mark.slow,
              pytest.mark.skipif(peers_missing() is not None, reason=str(peers_missing()))]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cases = [make_case("none", 50.0, seed=1), make_case("t1", 50.0, seed=2)]
    found = run_cases(cases, tmp_path_factory.mktemp("dsc-dro"), timeout=600.0)
    for route, rows in found.items():
        for case, result, _ in rows:
            print(f"\n{route} {case.leak}: CBV {result.fraction('cbv'):.2f} CBF {result.fraction('cbf'):.2f} "
                  f"MTT {result.fraction('mtt'):.2f} negative {result.negative_voxels} empty {result.empty_voxels}")
    return found


def test_cbv_meets_the_tolerance_with_and_without_leakage(results: dict[str, Any]) -> None:
    """CBV in tolerance in >= 95 % of patches without leakage, >= 90 % with T1-dominant leakage."""
    for route in ("dsc", "dsc_bayes"):
        (_, none, _), (_, t1, _) = results[route]
        assert none.fraction("cbv") >= 0.95, route
        assert t1.fraction("cbv") >= 0.90, route


def test_bayesian_cbf_meets_the_tolerance_where_osvd_does_not(results: dict[str, Any]) -> None:
    """CBF in tolerance in >= 90 % of patches with the Bayesian method; oSVD about 60 % (short MTT)."""
    for (_, bayes, _), (_, osvd, _) in zip(results["dsc_bayes"], results["dsc"], strict=True):
        assert bayes.fraction("cbf") >= 0.90
        assert osvd.fraction("cbf") < bayes.fraction("cbf")


def test_no_negative_voxel_in_any_delivered_map(results: dict[str, Any]) -> None:
    for route in ("dsc", "dsc_bayes"):
        for case, result, job in results[route]:
            assert set(result.negative_voxels) == {"cbv", "cbf", "mtt"}
            assert sum(result.negative_voxels.values()) == 0, (route, case.leak)
            quality = [t for t in result.texts if t.startswith("quality:")]
            masked = sum(job.findings["masked_voxels"].values())
            assert len(quality) == 1 and (str(masked) in quality[0] if masked else "every" in quality[0])


@pytest.mark.xfail(strict=True, reason=(
    "MTT within 20 % in >= 90 % of patches is not met: at SNR 50 the Bayesian method gives 50-59 % "
    "(oSVD 12-22 %); the misses are the low-CBV patches (CBV 1-2.5 ml/100 g: 1-3 % signal drop, a "
    "peak contrast-to-noise ratio near 1 per voxel at SNR 30), where MTT = CBV/CBF of single voxels "
    "is noise-limited (CBV >= 4: 37 of 42 patches within 20 % at SNR 50 over all leak conditions); "
    "noise-free the Bayesian MTT is within 20 % in 30-31 of 32 patches"))
def test_mtt_meets_twenty_percent(results: dict[str, Any]) -> None:
    for _, result, _ in results["dsc_bayes"]:
        assert result.fraction("mtt") >= 0.90
