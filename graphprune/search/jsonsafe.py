"""JSON that every parser reads: no bare NaN / Infinity.

Python's json writes float('nan') as `NaN`, which is not JSON (jq, browsers and most
languages refuse the file). A diverged fine-tuning produces exactly such numbers, so
every JSON optimize writes goes through `dumps`: non-finite numbers become null, and the
caller learns where (to say so in the output) instead of losing it silently.
"""
from __future__ import annotations

import json
import math


def finite(obj, path: str = "$", where: list[str] | None = None):
    """A copy of `obj` with numpy scalars/arrays as Python values and every non-finite float
    replaced by None; the JSON paths of the replaced values are appended to `where`."""
    import numpy as np
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        if where is not None:
            where.append(f"{path} ({obj!r})")
        return None
    if isinstance(obj, dict):
        return {k: finite(v, f"{path}.{k}", where) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v, f"{path}[{i}]", where) for i, v in enumerate(obj)]
    return obj


def dumps(obj, where: list[str] | None = None, **kw) -> str:
    """json.dumps(allow_nan=False) of finite(obj); `where` collects the nulled paths."""
    return json.dumps(finite(obj, "$", where), allow_nan=False, default=str, **kw)
