"""Meningioma grade (WHO 1 vs 2/3) from post-contrast T1: radiomics + deep-feature nomogram.

Follows Li et al., "An MRI-based deep transfer learning radiomics nomogram for
predicting meningioma grade", Sci Rep 2025 (doi:10.1038/s41598-025-01665-0).
Not for clinical use.
"""
