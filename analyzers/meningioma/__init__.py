"""Meningioma grade (WHO 1 vs 2/3) from post-contrast T1: radiomics + deep-feature nomogram.

Follows Li et al., "An MRI-based deep transfer learning radiomics nomogram for
predicting meningioma grade", Sci Rep 2025 (doi:10.1038/s41598-025-01665-0).
Not for clinical use.

Modules: ``analyzer`` (the node's entry point, :class:`MeningiomaAnalyzer`),
``preprocessing`` (N4, 1 mm), ``radiomics_features`` (pyradiomics with
``params.yaml``), ``deep_features`` (ResNet50), ``clinical`` (sex, shape, margin,
edema), ``selection`` (ICC, Spearman, LASSO), ``model`` (nomogram, SVMs, model
folder), ``segmentation`` (automatic ROI), ``pipeline`` (one case), ``train`` and
``trainer`` (``pacsnode train meningioma``). Heavy dependencies (torch,
pyradiomics) load with those modules, not with the package.
"""

__all__: list[str] = []
