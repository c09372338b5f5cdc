"""The outlier test: MAD anomaly index of the smallest reversed-trigger norm (spec 7.1 step 3)."""

from __future__ import annotations

import numpy as np

from benchsuite.core.errors import BenchError


def anomaly_index(values: np.ndarray, consistency: float = 1.4826, scale: float = 1.0) -> float:
    """|x_min - median(x)| / (c * scale * median(|x - median(x)|)).

    The slides' index has ``scale`` 1; the SC code divides by 0.6745 as well (``scale`` 1/0.6745).
    When every value but the smallest is equal the MAD is 0: the index is then 0 if the smallest
    is equal too, else very large (the MAD is floored at 1e-12).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise BenchError(f"the anomaly index needs at least 2 norms (clusters), got {x.size}: raise clusters/k_min")
    median = np.median(x)
    deviation = abs(x.min() - median)
    if deviation == 0:
        return 0.0
    mad = consistency * scale * np.median(np.abs(x - median))
    return float(deviation / max(mad, 1e-12))
