"""The paired statistics against scipy's references and hand-checked cases."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from sdce import stats

D = [0.3, 0.1, 0.4, -0.05, 0.25]


def test_t_test_matches_scipy():
    r = stats.paired(D)
    ref = sps.ttest_1samp(D, 0.0)
    ci = ref.confidence_interval(0.95)
    assert r["n"] == 5 and r["dropped"] == 0
    assert r["mean"] == pytest.approx(0.2, abs=1e-12)
    assert r["sd"] == pytest.approx(np.std(D, ddof=1), abs=1e-12)
    assert r["t_low"] == pytest.approx(ci.low, abs=1e-12)
    assert r["t_high"] == pytest.approx(ci.high, abs=1e-12)
    assert r["p_t"] == pytest.approx(ref.pvalue, abs=1e-12)
    # by hand: squared deviations sum to 0.125, so sd = sqrt(0.125 / 4); t = 0.2 / (sd / sqrt 5)
    assert r["sd"] == pytest.approx(math.sqrt(0.03125), abs=1e-12)
    t = 0.2 / (math.sqrt(0.03125) / math.sqrt(5))
    assert r["p_t"] == pytest.approx(2 * sps.t.sf(t, 4), abs=1e-12)
    assert not r["significant"] and r["verdict"] == "not significant"


def test_confidence_level_changes_interval():
    r90 = stats.paired(D, confidence=0.90)
    ci = sps.ttest_1samp(D, 0.0).confidence_interval(0.90)
    assert (r90["t_low"], r90["t_high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)
    r95 = stats.paired(D)
    assert r95["t_low"] < r90["t_low"] < r90["t_high"] < r95["t_high"]
    # 0 lies inside the 95% interval (p > 0.05) but not the 90% one (p < 0.10)
    assert r95["t_low"] < 0 < r90["t_low"]


def test_alpha_sets_verdict():
    r = stats.paired(D, alpha=0.10)
    assert r["significant"] and r["verdict"] == "significant"


def test_bootstrap_deterministic_and_contains_mean():
    a, b = stats.paired(D, seed=3), stats.paired(D, seed=3)
    assert a == b
    c = stats.paired(D, seed=4)
    assert (c["boot_low"], c["boot_high"], c["p_boot"]) != (a["boot_low"], a["boot_high"], a["p_boot"])
    for r in (a, c):
        assert r["boot_low"] < r["mean"] < r["boot_high"]
        # the percentile interval lies within the range of the data
        assert min(D) <= r["boot_low"] and r["boot_high"] <= max(D)
        assert 1 / (10_000 + 1) <= r["p_boot"] <= 1


def test_bootstrap_against_direct_resampling():
    n_boot, seed = 2000, 11
    r = stats.paired(D, n_boot=n_boot, seed=seed)
    d = np.array(D)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    means = np.array([d[i].mean() for i in idx])
    lo, hi = np.quantile(means, [0.025, 0.975])
    assert (r["boot_low"], r["boot_high"]) == pytest.approx((lo, hi), abs=1e-12)
    centred = np.array([(d - d.mean())[i].mean() for i in idx])
    count = sum(abs(m) >= abs(d.mean()) for m in centred)
    assert r["p_boot"] == pytest.approx((count + 1) / (n_boot + 1), abs=1e-15)
    # an effect of about 2.6 standard errors: the bootstrap p is small but not at its floor
    assert 1 / (n_boot + 1) < r["p_boot"] < 0.1


def test_large_clear_effect():
    rng = np.random.default_rng(1)
    d = 5 + 0.1 * rng.standard_normal(8)
    r = stats.paired(d, n_boot=5000)
    assert r["p_boot"] == pytest.approx(1 / 5001, abs=1e-15)
    assert r["p_t"] < 1e-10
    assert r["significant"] and r["verdict"] == "significant"
    assert r["t_low"] > 4.5 and r["boot_low"] > 4.5


def test_identical_runs_not_significant():
    r = stats.paired([0.0] * 6)
    assert r["mean"] == 0.0 and r["sd"] == 0.0
    assert r["p_t"] == 1.0 and r["p_boot"] == 1.0
    assert r["t_low"] == r["t_high"] == 0.0
    assert not r["significant"] and r["verdict"] == "not significant"
    assert math.isnan(r["mde"])


def test_constant_nonzero_difference():
    # sd exactly 0 even though np.std of these leaves a rounding residue
    r = stats.paired([0.1] * 3)
    assert r["sd"] == 0.0 and r["p_t"] == 0.0
    assert r["significant"] and math.isnan(r["mde"])


def _power(delta, n, sd, alpha=0.05):
    df, tcrit = n - 1, sps.t.ppf(1 - alpha / 2, n - 1)
    nc = delta * math.sqrt(n) / sd
    return 1 - sps.nct.cdf(tcrit, df, nc) + sps.nct.cdf(-tcrit, df, nc)


def test_mde_gives_power_08():
    r = stats.paired(D)
    n, sd, delta = r["n"], r["sd"], r["mde"]
    assert _power(delta, n, sd) == pytest.approx(0.8, abs=1e-9)
    # 1.68 sd: the effect size a one-sample t-test with 5 pairs needs for 80% power (G*Power)
    assert delta / sd == pytest.approx(1.682, abs=1e-3)
    assert stats.power(delta, n, sd) == pytest.approx(0.8, abs=1e-9)
    # half the MDE is detected far less often
    assert _power(delta / 2, n, sd) < 0.4


@pytest.mark.parametrize("n, alpha", [(3, 0.05), (10, 0.05), (10, 0.01), (40, 0.05)])
def test_mde_power_other_n(n, alpha):
    delta = stats.mde(n, 0.7, alpha=alpha)
    assert _power(delta, n, 0.7, alpha) == pytest.approx(0.8, abs=1e-9)


def test_mde_two_pairs():
    # df = 1: scipy's nct.cdf(-tcrit, 1, nc) is NaN here; the lower tail is negligible anyway
    delta = stats.mde(2, 1.0)
    tcrit = sps.t.ppf(0.975, 1)
    assert 1 - sps.nct.cdf(tcrit, 1, delta * math.sqrt(2)) == pytest.approx(0.8, abs=1e-9)
    assert delta == pytest.approx(11.55, abs=0.01)


def test_mde_decreases_with_n():
    sd = 0.3
    mdes = [stats.mde(n, sd) for n in (2, 3, 5, 10, 40)]
    assert all(a > b for a, b in zip(mdes, mdes[1:], strict=False))
    # large n: close to the normal approximation (z_0.975 + z_0.8) sd / sqrt n
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    assert mdes[-1] == pytest.approx(z * sd / math.sqrt(40), rel=0.05)
    # and the same through paired(): data with the same sd, more pairs
    base = np.array([-1.0, 1.0])
    small, large = stats.paired(np.tile(base, 2)), stats.paired(np.tile(base, 8))
    assert large["mde"] < small["mde"]


def test_mde_alpha():
    assert stats.mde(6, 0.2, alpha=0.01) > stats.mde(6, 0.2, alpha=0.05)


def test_nan_dropped():
    r = stats.paired([0.3, float("nan"), 0.1, 0.4, np.nan, -0.05, 0.25])
    assert r["n"] == 5 and r["dropped"] == 2
    ref = stats.paired(D)
    for key in ("mean", "sd", "t_low", "t_high", "p_t", "boot_low", "boot_high", "p_boot", "mde"):
        assert r[key] == pytest.approx(ref[key], abs=1e-12), key


@pytest.mark.parametrize("values", [[0.12], [0.12, float("nan")]])
def test_single_pair(values):
    r = stats.paired(values)
    assert r["n"] == 1 and r["dropped"] == len(values) - 1 and r["mean"] == pytest.approx(0.12)
    for key in ("sd", "t_low", "t_high", "p_t", "boot_low", "boot_high", "p_boot", "mde"):
        assert math.isnan(r[key]), key
    assert r["significant"] is False and r["verdict"] == "n/a"
    assert stats.format_interval(r) == "+0.120 (n=1, no interval)"


def test_no_pairs():
    r = stats.paired([float("nan")])
    assert r["n"] == 0 and r["dropped"] == 1 and math.isnan(r["mean"])
    assert r["verdict"] == "n/a"


def test_invalid_arguments():
    with pytest.raises(ValueError):
        stats.paired(D, confidence=1.0)
    with pytest.raises(ValueError):
        stats.paired(D, n_boot=0)


def test_compare_pairs_shared_keys():
    baseline = {(0, 0): 3.0, (0, 1): 3.2, (1, 0): 3.1, (1, 1): 2.9, (2, 0): 3.5}
    guided = {(1, 1): 2.85, (0, 0): 2.7, (1, 0): 3.0, (0, 1): 3.1, (3, 0): 1.0}
    r = stats.compare(baseline, guided, n_boot=500, seed=2)
    assert r["pairs"] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    expected = [2.7 - 3.0, 3.1 - 3.2, 3.0 - 3.1, 2.85 - 2.9]
    ref = stats.paired(expected, n_boot=500, seed=2)
    assert r["n"] == 4 and r["mean"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert r["p_t"] == pytest.approx(sps.ttest_1samp(expected, 0.0).pvalue, abs=1e-12)
    assert {k: v for k, v in r.items() if k != "pairs"} == ref


def test_compare_nan_value_is_dropped_but_listed():
    baseline = {(0, 0): 1.0, (0, 1): float("nan"), (1, 0): 1.0}
    guided = {(0, 0): 0.9, (0, 1): 0.8, (1, 0): 0.7}
    r = stats.compare(baseline, guided)
    assert r["pairs"] == [(0, 0), (0, 1), (1, 0)]
    assert r["n"] == 2 and r["dropped"] == 1
    assert r["mean"] == pytest.approx(-0.2, abs=1e-12)


def test_format_interval():
    r = stats.paired(D)
    text = stats.format_interval(r)
    assert text == (
        f"+0.200 [{r['t_low']:+.3f}, {r['t_high']:+.3f}], p={r['p_t']:.2g} (paired t, n=5), not significant"
    )
    assert text.startswith("+0.200 [-0.019, +0.419], p=0.065")
    assert "\u2212" not in text
    big = stats.format_interval(stats.paired([5.0, 5.1, 4.9, 5.05], n_boot=100))
    assert big.endswith("(paired t, n=4), significant") and "p<0.001" in big
    assert "not significant" not in big
    assert stats.format_interval(r, fmt="{:.1f}").startswith("0.2 [-0.0, 0.4]")
