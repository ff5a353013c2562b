"""DSC perfusion analyzer: leakage-corrected CBV/CBF maps and dural metastasis vs meningioma.

Modules
-------
signal
    Bolus arrival, baseline S0, ΔR2*, wash-in time, PSR and wash-out slope.
aif
    Automatic arterial input function (Mouridsen-style clustering).
leakage
    Boxerman–Schmainda–Weisskoff leakage correction (K2 map).
deconvolution
    Block-circulant oSVD / standard sSVD deconvolution, CBV, CBF, MTT.
maps
    The whole-series pipeline on ``(t, z, y, x)`` arrays.
reference, candidates
    Contralateral normal-appearing white matter, lesion measurements and ratios;
    automatic dural-lesion candidates.
model, train
    The dural metastasis vs meningioma classifier (JSON model folders) and
    ``pacsnode train dsc``.
analyzer, report
    :class:`~analyzers.dsc.analyzer.DscAnalyzer` and its DICOM outputs.
simulate, loop
    Analytical forward model and per-voxel reference implementation (tests, benchmark).

Every output is research output, not for clinical use.
"""
