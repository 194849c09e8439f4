"""A classical regression model of latency and error over a configuration.

Features: each group's kept fraction and their pairwise products (a conv's cost
scales with the product of its input and output widths). Latency: Ridge on those
features plus, when given, the configuration's exact MAC count relative to the
original (cheap to compute: a graph rewrite and a count, no measurement), fitted to
log-latency (multiplicative effects add up). Error: gradient
boosting when enough configurations are measured, Ridge below that. Accuracy of the
model is reported on measured configurations it was not fitted to (MAPE for
latency, MAE for error, in error units: 0.01 = 1 pp).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# A linear model in log-latency extrapolates exponentially: fitted on the original and one-group-at-a-time
# sweeps (all with MACs near the original's), a steep slope in MACs (e.g. sweep points timed under another
# load than a cached original) predicted 1e13 ms for configurations with half the MACs, and the search then
# screened every candidate as dominated. No pruned configuration is expected 4x beyond what was measured.
LOG_MARGIN = float(np.log(4.0))


def features(fractions: np.ndarray) -> np.ndarray:
    f = np.atleast_2d(np.asarray(fractions, float))
    n = f.shape[1]
    pairs = [f[:, i] * f[:, j] for i in range(n) for j in range(i, n)]
    return np.column_stack([f] + pairs) if pairs else f


@dataclass
class Surrogate:
    lat_model: object = None
    err_model: object = None
    n_fit: int = 0

    uses_macs: bool = False
    log_range: tuple | None = None      # predictions are kept within the fitted log-latencies +- LOG_MARGIN

    def _lat_features(self, X, macs_rel):
        if not self.uses_macs:
            return X
        m = np.asarray(macs_rel, float).reshape(-1, 1)
        return np.column_stack([m, np.log(m), X])

    def fit(self, fractions: np.ndarray, latency_ms: np.ndarray, error: np.ndarray, seed: int = 0,
            macs_rel: np.ndarray | None = None) -> "Surrogate":
        from sklearn.ensemble import GradientBoostingRegressor
        from sklearn.linear_model import Ridge
        X = features(fractions)
        self.uses_macs = macs_rel is not None
        if latency_ms is not None:
            y = np.log(np.maximum(np.asarray(latency_ms, float), 1e-6))
            self.lat_model = Ridge(alpha=1e-2).fit(self._lat_features(X, macs_rel), y)
            self.log_range = (float(y.min()) - LOG_MARGIN, float(y.max()) + LOG_MARGIN)
        if len(X) >= 30:
            self.err_model = GradientBoostingRegressor(n_estimators=150, max_depth=2, learning_rate=0.05,
                                                       subsample=0.8, random_state=seed).fit(X, error)
        else:
            self.err_model = Ridge(alpha=1e-2).fit(X, error)
        self.n_fit = len(X)
        return self

    def predict(self, fractions: np.ndarray, macs_rel: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray]:
        X = features(fractions)
        lat = None
        if self.lat_model is not None:
            if self.uses_macs and macs_rel is None:
                raise ValueError("this surrogate was fitted with MAC counts: give macs_rel")
            lat = np.exp(np.clip(self.lat_model.predict(self._lat_features(X, macs_rel)), *self.log_range))
        return lat, np.clip(self.err_model.predict(X), 0.0, 1.0)


def prediction_error(sur: Surrogate, fractions, latency_ms, error, macs_rel=None) -> dict:
    """MAPE of latency (%) and MAE of error on configurations `sur` was not fitted to."""
    lat_p, err_p = sur.predict(np.asarray(fractions), macs_rel)
    err = np.asarray(error, float)
    mape = None
    if lat_p is not None and latency_ms is not None:
        lat = np.asarray(latency_ms, float)
        mape = float(np.mean(np.abs(lat_p - lat) / lat) * 100)
    return {"n": int(len(err)), "latency_mape_pct": mape,
            "error_mae": float(np.mean(np.abs(err_p - err))),
            "error_mae_pp": float(np.mean(np.abs(err_p - err)) * 100)}
