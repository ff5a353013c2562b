"""Vertebral hemangioma vs metastasis on sagittal spine MRI (T1, T2, STIR, T1C).

Follows ../shared/papers/spine-hemangioma-vs-metastasis-cnn.txt: one small CNN per
sequence on the lesion ROI cropped from the sagittal slice (:mod:`.model`), lesion
ROIs from a SEG or from automatic vertebral-lesion detection (:mod:`.detect`),
training and evaluation (:mod:`.train`, ``pacsnode train spine``) and the analyzer
(:mod:`.analyzer`, entry point ``spine``). Nothing here is for clinical use.
"""

from __future__ import annotations

__all__: list[str] = []
