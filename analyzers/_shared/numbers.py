"""How numbers are written into DICOM outputs (no heavy imports: the qc analyzer uses it too)."""

from __future__ import annotations

import math

__all__ = ["MEASUREMENT_DIGITS", "significant"]

#: Significant digits of a reported measurement: more than the methods resolve would be noise.
MEASUREMENT_DIGITS = 4


def significant(value: float, digits: int = MEASUREMENT_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits.

    SR numeric values are Decimal Strings (at most 16 characters, PS3.5 6.2); a float such as
    10.000000000000002 written in full needs 17 (pydicom's own formatting gives
    ``10.00000000000000``). Rounded, it is written as ``10.0`` and a perfusion value as ``5.467``
    instead of ``5.46650347986346``. Non-finite values and zero are returned as they are.
    """
    value = float(value)
    if not math.isfinite(value) or value == 0.0:
        return value
    return float(f"{value:.{digits}g}")
