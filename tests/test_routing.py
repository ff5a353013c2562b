"""Routing rules: the shipped defaults against real scanner naming, explanation and validation."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from analyzers.contract import AnalysisInput, AnalysisResult, AnalyzerSettings
from node.routing.rules import RouteError, load_routes, parse_routes

ROUTES = Path(__file__).resolve().parents[1] / "config" / "routes.toml"


@pytest.fixture(scope="module")
def table():
    return load_routes(ROUTES)


def _routes(table, description: str, **extra: str) -> list[str]:
    return [r.name for r in table.select({"SeriesDescription": description, "Modality": "MR", **extra})]


POST_3D = ["brainmets", "meningioma"]


@pytest.mark.parametrize(("description", "routes"), [
    # DSC perfusion (Siemens ep2d_perf, generic DSC/PWI/perfusion names; the phantoms' vendor styles)
    ("ep2d_perf_p2 64 meas", ["dsc"]), ("ep2d_perf", ["dsc"]), ("DSC", ["dsc"]), ("PWI_dynamic_GRE", ["dsc"]),
    ("perfusion", ["dsc"]), ("Perf GRE-EPI", ["dsc"]), ("DSC PERFUSION", ["dsc"]), ("PERFUSION DSC", ["dsc"]),
    # DCE (TWIST, VIBE dynamic, t1_fl3d_dyn)
    ("DCE", ["dce"]), ("t1_twist_tra_dyn", ["dce"]), ("dyn", ["dce"]), ("vibe dyn", ["dce"]),
    ("t1_fl3d_dyn", ["dce"]), ("DCE_perfusion", ["dce"]), ("t1_vibe_dce_dyn", ["dce"]), ("Ax DCE 3D SPGR", ["dce"]),
    ("DCE_T1FFE_dyn", ["dce"]),
    # variable flip angle T1 mapping for DCE (FA2 / FA15)
    ("t1_vibe_FA2", ["vfa"]), ("t1_vibe_fa15", ["vfa"]), ("VFA T1", ["vfa"]), ("FA 15", ["vfa"]),
    ("Ax 3D SPGR T1MAP FA2", ["vfa"]), ("T1_FFE_VFA_FA15", ["vfa"]),
    # post-contrast T1 (meningioma)
    ("T1 post", ["meningioma"]), ("T1+C", ["meningioma"]), ("t1_se_tra_KM", ["meningioma"]),
    ("T1C", ["meningioma"]), ("AX T1 Gd", ["meningioma"]), ("t1_tse_cor post contrast", ["meningioma"]),
    # 3D T1 (brainmets); post-contrast 3D T1 also to meningioma
    ("SPACE", ["brainmets"]), ("MPRAGE", ["brainmets"]), ("t1_mprage_sag_p2", ["brainmets"]),
    ("tfl3d1_ns", ["brainmets"]), ("BRAVO", ["brainmets"]), ("3D T1 post", POST_3D),
    ("t1_space_tra_KM", POST_3D), ("t1_mprage_tra_iso_KM", POST_3D), ("Ax 3D T1 BRAVO +C", POST_3D),
    ("T1W_3D_TFE +C", POST_3D), ("Ax 3D T1 CUBE BB +C", POST_3D), ("3D_T1_VISTA_BB +C", POST_3D),
    # vendor names of 3D T1 (Siemens, GE, Philips, Canon) and their post-contrast variants
    ("3D Ax T1 MP-RAGE_R22", ["brainmets"]), ("MP-RAGE", ["brainmets"]), ("Sag 3D MPRAGE", ["brainmets"]),
    ("t1_mpr_sag_p2_iso", ["brainmets"]), ("Ax 3D BRAVO", ["brainmets"]), ("Ax T1 FSPGR 3D", ["brainmets"]),
    ("Sag IR-FSPGR", ["brainmets"]), ("3D T1 TFE", ["brainmets"]), ("T1W_3D_TFE", ["brainmets"]),
    ("sT1W_3D_TFE_SENSE", ["brainmets"]), ("CUBE T1", ["brainmets"]), ("3D FFE T1", ["brainmets"]),
    ("MPRAGE +C", POST_3D), ("Ax BRAVO +C", POST_3D), ("Sag FSPGR post contrast", POST_3D),
    # vendor names of DSC and DCE
    ("PWI", ["dsc"]), ("Ax PERFUSION", ["dsc"]), ("DSC_PERF", ["dsc"]), ("EPI perfusion", ["dsc"]),
    ("DISCO", ["dce"]), ("Ax DISCO DCE", ["dce"]), ("THRIVE dyn", ["dce"]), ("T1 THRIVE DCE", ["dce"]),
    ("TWIST", ["dce"]), ("t1_vibe_perfusion", ["dce"]),
    # spine
    ("t2_tirm_sag LWS", ["spine"]), ("HWS t2_tirm_sag", ["spine"]),
    ("t2_tse_sag_LWS", ["spine"]), ("t1_tse_sag BWS", ["spine"]), ("STIR_sag HWS", ["spine"]),
    ("Spine T1 post", ["spine"]), ("T2 lumbar spine", ["spine"]),
])
def test_default_routes_match_scanner_naming(table, description: str, routes: list[str]) -> None:
    assert _routes(table, description) == [*routes, "qc"]


@pytest.mark.parametrize("description", ["t1_tse_sag", "Sag T1 FSE", "T2W_TSE_SAG", "t2_tirm_sag", "STIR_SAG"])
def test_spine_by_body_part(table, description: str) -> None:
    assert _routes(table, description, BodyPartExamined="SPINE") == ["spine_bodypart", "qc"]
    assert _routes(table, description, BodyPartExamined="HEAD") == ["qc"]


@pytest.mark.parametrize("description", ["t2_tse_tra", "t2_space_flair_sag", "ep2d_diff_3scan", "localizer",
                                         "SWI_Images", "t2_tse_sag", "t2_tirm_tra_dark-fluid", "pCASL",
                                         "ASL perfusion", "WIP SOURCE - 3DpCASL", "t1_vibe_fs_tra", "Ax DWI"])
def test_other_series_get_only_qc(table, description: str) -> None:
    assert _routes(table, description) == ["qc"]


def test_dynamic_vibe_thrive_lava_go_to_dce_by_their_time_axis(table) -> None:
    for description in ("t1_vibe_fs_tra", "THRIVE", "Ax LAVA"):
        assert _routes(table, description, NumberOfTemporalPositions="60") == ["dce_multiphase", "qc"]
        assert _routes(table, description, NumberOfTemporalPositions="1") == ["qc"]


def test_dark_fluid_tirm_is_not_spine_stir(table) -> None:
    assert _routes(table, "t2_tirm_tra_dark-fluid", BodyPartExamined="SPINE") == ["qc"]


def test_derived_images_and_non_mr_are_not_analyzed(table) -> None:
    assert _routes(table, "ep2d_perf", ImageType="DERIVED\\PRIMARY\\RELCBV") == ["qc"]
    assert table.select({"SeriesDescription": "ep2d_perf", "Modality": "SR"})[0].name == "dsc"
    assert [r.name for r in table.select({"SeriesDescription": "QC", "Modality": "SR"})] == []
    assert [r.name for r in table.select({"SeriesDescription": "tumour ROI", "Modality": "SEG"})] == ["seg"]
    parametric_map = {"SeriesDescription": "CBV", "Modality": "MR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.30"}
    assert [r.name for r in table.select(parametric_map)] == []


def test_explain_says_why(table) -> None:
    decisions = {d.route.name: d for d in table.decide({"SeriesDescription": "ep2d_perf_p2 64 meas",
                                                         "Modality": "MR"})}
    assert decisions["dsc"].selected
    assert any("ep2d_perf" in reason for reason in decisions["dsc"].reasons)
    assert not decisions["dce"].matched
    assert any("matches none of" in reason for reason in decisions["dce"].reasons)
    assert decisions["qc"].selected


def test_first_exclusive_match_wins_and_others_say_so() -> None:
    table = parse_routes("""
[[route]]
name = "a"
analyzer = "x"
match = { SeriesDescription = "t1" }
[[route]]
name = "b"
analyzer = "y"
match = { SeriesDescription = "post" }
[[route]]
name = "c"
analyzer = "z"
exclusive = false
match = { Modality = "MR" }
""")
    decisions = table.decide({"SeriesDescription": "T1 POST", "Modality": "MR"})
    assert [(d.route.name, d.matched, d.selected) for d in decisions] == [
        ("a", True, True), ("b", True, False), ("c", True, True)]
    assert "earlier exclusive route" in decisions[1].reasons[-1]


def test_match_all_keys_case_insensitive_absent_attribute_does_not_match() -> None:
    table = parse_routes("""
[[route]]
name = "r"
analyzer = "x"
match = { SeriesDescription = "perf", MRAcquisitionType = "^2D$" }
not_match = { ImageType = ["MPR", "PROJECTION"] }
enabled = true
""")
    route = table.routes[0]
    assert route.matches({"SeriesDescription": "EP2D_PERF", "MRAcquisitionType": "2d"})
    assert not route.matches({"SeriesDescription": "EP2D_PERF"})
    assert not route.matches({"SeriesDescription": "perf", "MRAcquisitionType": "2D", "ImageType": "DERIVED\\MPR"})
    assert route.matches({"SeriesDescription": "perf", "MRAcquisitionType": "2D", "ImageType": ["ORIGINAL", "M"]})


@pytest.mark.parametrize(("text", "message"), [
    ('[[route]]\nname = "r"\nanalyzer = "x"\nmatch = { SeriesDescription = "(" }', "not a valid regular expression"),
    ('[[route]]\nname = "r"\nanalyzer = "x"\nmatch = { SeriesDescriptio = "a" }', "not a DICOM attribute keyword"),
    ('[[route]]\nname = "r"\nanalyzer = "x"\nmatch = { SeriesDescription = "a" }\nsend = ["p"]', "unknown key"),
    ('[[route]]\nname = "r"\nanalyzer = "x"', "at least one attribute"),
    ('[[route]]\nname = "r"\nmatch = { Modality = "MR" }\non_late = "sometimes"', "on_late"),
    ('[[route]]\nname = "r"\nmatch = { Modality = "MR" }\n[[route]]\nname = "r"\nmatch = { Modality = "CT" }',
     "unique"),
    ("[route]\nname = 1", "[[route]]"),
])
def test_bad_routes_are_reported_with_route_and_key(text: str, message: str) -> None:
    with pytest.raises(RouteError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_routes(text, "routes.toml")


class _Settings(AnalyzerSettings):
    threshold: float = 0.5


class _Fake:
    name: ClassVar[str] = "fake"
    version: ClassVar[str] = "2.0"
    needs: ClassVar[dict[str, str]] = {"t1map": "vfa?"}
    wants_priors: ClassVar[bool] = True
    settings_model: ClassVar[type[AnalyzerSettings]] = _Settings

    def analyze(self, job: AnalysisInput) -> AnalysisResult:
        return AnalysisResult()


def _loader(name: str) -> _Fake:
    if name != "fake":
        raise LookupError(f"no analyzer {name}")
    return _Fake()


def test_validate_settings_missing_analyzers_and_destinations() -> None:
    table = parse_routes("""
[[route]]
name = "ok"
analyzer = "fake"
settings = { threshold = 0.7 }
send_to = ["pacs"]
match = { SeriesDescription = "a" }
[[route]]
name = "later"
analyzer = "dsc"
send_to = ["pacs"]
match = { SeriesDescription = "b" }
""")
    warnings = table.validate(_loader, ["pacs"])
    assert table.settings["ok"] == _Settings(threshold=0.7)
    assert table.versions["ok"] == "2.0" and table.wants_priors["ok"]
    assert "later" in table.unavailable and any("not installed" in w for w in warnings)
    assert any("optional role" in w for w in warnings)  # needs "vfa?" but no such route
    assert [r.name for r in table.runnable({"SeriesDescription": "b"})] == []
    assert [r.name for r in table.select({"SeriesDescription": "b"})] == ["later"]

    bad = parse_routes('[[route]]\nname = "ok"\nanalyzer = "fake"\nsettings = { threshold = "high" }\n'
                       'match = { SeriesDescription = "a" }')
    with pytest.raises(RouteError, match="settings invalid"):
        bad.validate(_loader, [])
    typo = parse_routes('[[route]]\nname = "ok"\nanalyzer = "fake"\nsettings = { treshold = 1 }\n'
                        'match = { SeriesDescription = "a" }')
    with pytest.raises(RouteError, match="treshold"):
        typo.validate(_loader, [])
    nowhere = parse_routes('[[route]]\nname = "ok"\nanalyzer = "fake"\nsend_to = ["archive"]\n'
                           'match = { SeriesDescription = "a" }')
    with pytest.raises(RouteError, match="unknown destination"):
        nowhere.validate(_loader, ["pacs"])


def test_shipped_routes_validate_with_installed_analyzers(table) -> None:
    from analyzers.registry import UnknownAnalyzer, load_analyzer

    fresh = load_routes(ROUTES)
    fresh.validate(load_analyzer, ["pacs"], missing=UnknownAnalyzer)
    assert "qc" in fresh.settings  # the built-in analyzer is always there
    for name in ("dsc", "dce", "meningioma", "brainmets", "spine"):
        assert name in fresh.settings or name in fresh.unavailable


def test_cli_routes_test_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli import main

    config = tmp_path / "node.toml"
    config.write_text(f'[routing]\nroutes = "{ROUTES}"\n[[destinations]]\nname = "pacs"\nae_title = "PACS"\n'
                      'host = "127.0.0.1"\nport = 104\n', encoding="utf-8")
    assert main(["routes", "test", "--config", str(config), "--description", "ep2d_perf_p2 64 meas"]) == 0
    out = capsys.readouterr().out
    assert "→ routes: dsc, qc" in out and "matches 'ep2d_perf'" in out
    assert main(["routes", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "qc" in out and "ok (qc" in out
    broken = tmp_path / "routes.toml"
    broken.write_text('[[route]]\nname = "x"\nanalyzer = "qc"\nmatch = { SeriesDescription = "(" }\n')
    config.write_text(f'[routing]\nroutes = "{broken}"\n', encoding="utf-8")
    assert main(["routes", "check", "--config", str(config)]) == 2
    assert "not a valid regular expression" in capsys.readouterr().err
