"""Brain-metastasis detection and segmentation on 3D post-contrast T1 (SPACE and MPRAGE).

Follows the methods of the study "MRI cross-technique
transfer learning for brain metastasis detection" (Eur Radiol Exp 2025;9:15):
connected-component instances matched by Dice > 0.1, per-patient instance
PPV/sensitivity/F1 and lesion-wise voxel Dice/PPV/sensitivity.
"""
