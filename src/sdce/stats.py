"""Paired comparison of a guided run against the baseline across replicates.

Each replicate (one seed on one fold) is trained once with guidance and once as the
baseline, so the unit of analysis is the paired difference ``d = guided - baseline`` of
that replicate; pairing removes the seed-to-seed and fold-to-fold variation that both
runs share. On the ``n`` differences (NaN values are dropped and counted):

- **paired t-test**: the two-sided one-sample t-test of ``mean(d) == 0`` with ``n - 1``
  degrees of freedom (the same p-value as ``scipy.stats.ttest_1samp(d, 0)``), and its
  confidence interval ``mean ± t_{(1+c)/2, n-1} · sd / √n``. When every difference is the
  same (sd = 0) the t statistic is 0/0 or ±∞: p = 1 if they are all 0 (a run identical to
  the baseline), p = 0 otherwise.
- **percentile bootstrap**: the replicates are resampled with replacement (a
  ``numpy.random.default_rng(seed)`` stream, so the result is reproducible) and the
  interval is the ``(1-c)/2`` and ``(1+c)/2`` quantiles of the resampled means. The
  bootstrap p-value of ``mean == 0`` resamples the centred differences ``d - mean(d)``
  (the null imposed by shifting) with the same draws, and counts the resampled means at
  least as far from 0 as the observed one: ``p = (count + 1) / (n_boot + 1)``, so it is
  never below ``1 / (n_boot + 1)``. It makes no normality assumption, but with a handful
  of replicates it has few distinct resamples and is coarse.
- **minimum detectable effect**: the true mean difference δ that the two-sided paired
  t-test at level ``alpha`` detects with power 0.8 at this ``n``, taking the observed sd
  as the true one. The power is that of the noncentral t with noncentrality
  ``δ√n / sd``: ``1 - F(t_crit) + F(-t_crit)``; δ is found with ``brentq``. An effect
  below the MDE that is "not significant" says little: the experiment could not have
  seen it.

The verdict ("significant" / "not significant") follows the paired t-test; with fewer
than two pairs there is no spread, so no interval, p-value or verdict ("n/a").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
from scipy import optimize
from scipy import stats as sps

POWER = 0.8  # the power the minimum detectable effect is computed at

_NAN = float("nan")


def _as_array(values: Iterable[float]) -> np.ndarray:
    if not isinstance(values, np.ndarray):
        values = list(values)
    return np.asarray(values, dtype=float).ravel()


def power(effect: float, n: int, sd: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level `alpha` with `n` pairs when the true
    mean difference is `effect` and the sd of the differences is `sd`."""
    df = n - 1
    tcrit = sps.t.ppf(1 - alpha / 2, df)
    return _power_nc(effect * math.sqrt(n) / sd, df, tcrit)


def _power_nc(nc: float, df: int, tcrit: float) -> float:
    # 1 - F(tcrit; nc) + F(-tcrit; nc), the lower tail written as sf(tcrit; -nc): scipy's
    # nct.cdf(-tcrit, df, nc) turns NaN once it underflows (large nc, few df)
    return float(sps.nct.sf(tcrit, df, nc) + sps.nct.sf(tcrit, df, -nc))


def mde(n: int, sd: float, alpha: float = 0.05, target: float = POWER) -> float:
    """The smallest true mean difference the two-sided paired t-test detects with power
    `target`: NaN with fewer than two pairs or without spread (sd 0 or NaN)."""
    if n < 2 or not np.isfinite(sd) or sd <= 0:
        return _NAN
    df = n - 1
    tcrit = sps.t.ppf(1 - alpha / 2, df)

    # solve in the noncentrality nc = δ√n/sd, then scale back; power(0) = alpha < target
    def gap(nc: float) -> float:
        return _power_nc(nc, df, tcrit) - target

    hi = tcrit + 1.0
    while gap(hi) < 0:
        hi *= 2
    nc = optimize.brentq(gap, 0.0, hi, xtol=1e-12, rtol=1e-14)
    return float(nc * sd / math.sqrt(n))


def paired(
    differences: Iterable[float],
    *,
    confidence: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Paired t-test, bootstrap and minimum detectable effect of the per-replicate
    differences (guided minus baseline); see the module docstring."""
    if not 0 < confidence < 1:
        raise ValueError(f"paired: confidence must be in (0, 1), got {confidence}")
    if not 0 < alpha < 1:
        raise ValueError(f"paired: alpha must be in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"paired: n_boot must be at least 1, got {n_boot}")
    raw = _as_array(differences)
    d = raw[~np.isnan(raw)]
    n = int(d.size)
    out = {
        "n": n,
        "dropped": int(raw.size - n),
        "mean": float(d.mean()) if n else _NAN,
        "sd": _NAN,
        "t_low": _NAN,
        "t_high": _NAN,
        "p_t": _NAN,
        "boot_low": _NAN,
        "boot_high": _NAN,
        "p_boot": _NAN,
        "significant": False,
        "verdict": "n/a",
        "mde": _NAN,
    }
    if n < 2:
        return out
    mean = out["mean"]
    # all differences equal: the sd is exactly 0 (np.std may leave a rounding residue)
    constant = bool(np.all(d == d[0]))
    sd = 0.0 if constant else float(d.std(ddof=1))
    half = float(sps.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    if constant:
        p_t = 1.0 if mean == 0 else 0.0
    else:
        p_t = float(sps.ttest_1samp(d, 0.0).pvalue)

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = d[idx].mean(axis=1)
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    centred = (d - mean)[idx].mean(axis=1)
    count = int(np.count_nonzero(np.abs(centred) >= abs(mean)))

    significant = bool(p_t < alpha)
    out.update(
        sd=sd,
        t_low=mean - half,
        t_high=mean + half,
        p_t=p_t,
        boot_low=float(lo),
        boot_high=float(hi),
        p_boot=(count + 1) / (n_boot + 1),
        significant=significant,
        verdict="significant" if significant else "not significant",
        mde=mde(n, sd, alpha),
    )
    return out


def compare(baseline: Mapping, guided: Mapping, **kw) -> dict:
    """`paired` on guided[k] - baseline[k] over the replicate keys both runs have, plus
    `pairs`, the sorted shared keys (those whose difference is NaN included: `dropped`
    counts them)."""
    shared = set(baseline) & set(guided)
    try:
        pairs = sorted(shared)
    except TypeError:  # keys of mixed types
        pairs = sorted(shared, key=repr)
    result = paired([float(guided[k]) - float(baseline[k]) for k in pairs], **kw)
    result["pairs"] = pairs
    return result


def format_interval(result: Mapping, fmt: str = "{:+.3f}") -> str:
    """One line: mean [t interval], p-value, test and n, verdict; for example
    ``+0.120 [-0.050, +0.290], p=0.21 (paired t, n=4), not significant``."""
    mean = fmt.format(result["mean"])
    n = result["n"]
    if n < 2:
        return f"{mean} (n={n}, no interval)"
    p = result["p_t"]
    p_text = "p<0.001" if p < 0.001 else f"p={p:.2g}"
    low, high = fmt.format(result["t_low"]), fmt.format(result["t_high"])
    return f"{mean} [{low}, {high}], {p_text} (paired t, n={n}), {result['verdict']}"
