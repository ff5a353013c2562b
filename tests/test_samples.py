"""The generated sample series used by the demo and the benchmarks."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from node.samples import SeriesSpec, write_mr_series


def test_every_instance_of_a_dynamic_sample_has_its_own_uid(tmp_path: Path) -> None:
    # 20 slices x 100 time points: (t=1, z=11) and (t=11, z=1) once shared a SOP Instance UID.
    files = write_mr_series(tmp_path, SeriesSpec(patient_id="S-1", slices=20, time_points=100, rows=8, columns=8,
                                                 seed=2, series_description="ep2d_perf"))
    uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert len(files) == 2000
    assert len(uids) == 2000
