"""A third-party analyzer package, built and pip-installed here, is discovered through the
``pacsnode.analyzers`` entry point, validated against its own settings model and run by
the local executor in a worker process."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from analyzers.contract import AnalysisInput, SeriesInput
from analyzers.registry import UnknownAnalyzer, analyzer_names, load_analyzer
from node.jobs.executors import LocalExecutor
from node.routing.rules import RouteError, parse_routes
from node.samples import SeriesSpec, write_mr_series

DISTRIBUTION = "pacsnode-thirdparty-slicecount"

MODULE = '''
"""A third-party pacsnode analyzer: counts the instances of a series."""

from typing import ClassVar

from analyzers.contract import AnalysisResult, AnalyzerSettings, UnsuitableInput


class SliceCountSettings(AnalyzerSettings):
    min_instances: int = 1


class SliceCount:
    name: ClassVar[str] = "slicecount"
    version: ClassVar[str] = "0.1.0"
    needs: ClassVar[dict] = {}
    wants_priors: ClassVar[bool] = False
    settings_model: ClassVar[type] = SliceCountSettings

    def analyze(self, job):
        count = len(job.series.files)
        if count < job.settings.min_instances:
            raise UnsuitableInput(f"{count} instance(s), at least {job.settings.min_instances} needed")
        return AnalysisResult(datasets=[], findings={"instances": count})
'''

PYPROJECT = f'''
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{DISTRIBUTION}"
version = "0.1.0"

[project.entry-points."pacsnode.analyzers"]
slicecount = "pacsnode_slicecount:SliceCount"

[tool.setuptools]
py-modules = ["pacsnode_slicecount"]
'''


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, check=False, timeout=300)


@pytest.fixture
def installed(tmp_path: Path):
    source = tmp_path / "package"
    source.mkdir()
    (source / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT), encoding="utf-8")
    (source / "pacsnode_slicecount.py").write_text(textwrap.dedent(MODULE), encoding="utf-8")
    result = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(source))
    if result.returncode != 0:
        pytest.fail(f"pip install failed:\n{result.stdout}\n{result.stderr}")
    importlib.invalidate_caches()
    try:
        yield
    finally:
        _pip("uninstall", "-y", DISTRIBUTION)
        importlib.invalidate_caches()
        sys.modules.pop("pacsnode_slicecount", None)


def test_installed_analyzer_is_discovered_validated_and_run(installed, tmp_path: Path) -> None:
    assert "slicecount" in analyzer_names()
    analyzer = load_analyzer("slicecount")
    assert analyzer.version == "0.1.0"

    table = parse_routes('[[route]]\nname = "count"\nanalyzer = "slicecount"\nsettings = { min_instances = 3 }\n'
                         'match = { Modality = "MR" }')
    assert table.validate(load_analyzer, [], missing=UnknownAnalyzer) == []
    settings = table.settings["count"]
    wrong = parse_routes('[[route]]\nname = "count"\nanalyzer = "slicecount"\nsettings = { min_instances = "x" }\n'
                         'match = { Modality = "MR" }')
    with pytest.raises(RouteError, match="min_instances"):
        wrong.validate(load_analyzer, [], missing=UnknownAnalyzer)

    files = write_mr_series(tmp_path / "in", SeriesSpec(slices=4, rows=8, columns=8))
    executor = LocalExecutor(1)
    try:
        job = AnalysisInput("job-3p", SeriesInput("1.2", "1.1", tuple(files), {}), {}, [], settings, tmp_path)
        outcome = executor.submit("slicecount", job).result(timeout=120)
        assert outcome.findings == {"instances": 4} and outcome.rejected is None
        few = AnalysisInput("job-3p-2", SeriesInput("1.2", "1.1", tuple(files[:2]), {}), {}, [], settings, tmp_path)
        assert "at least 3" in executor.submit("slicecount", few).result(timeout=120).rejected
    finally:
        executor.close()


def test_uninstalled_analyzer_is_unknown() -> None:
    assert "slicecount" not in analyzer_names()
    with pytest.raises(UnknownAnalyzer, match="slicecount"):
        load_analyzer("slicecount")
