"""The two-level (seeds, then queries within seed) bootstrap CI of sgmn.evaluate.tables.paired_test.

Every expected value here comes from constructed hit vectors and closed-form arithmetic, not
from the code under test: for paired 0/1 hits, d = hit_b - hit_a is -1, 0 or +1 per query, the
paired difference in points is 100 * mean(d), and a query bootstrap of n queries has standard
error 100 * sqrt(var(d) / n) (var with ddof=0: the bootstrap draws from the empirical
distribution), so its 95% percentile CI has half-width close to 1.96 times that.
"""
import math

import numpy as np
import pandas as pd
import pytest

from sgmn.evaluate import tables
from sgmn.evaluate.tables import paired_test

N = 400  # queries per seed
VIDS = [f"q{i:03d}" for i in range(N)]


def pair(b_only: int, a_only: int, both: int = 100, shuffle: int | None = None):
    """Per-query tables (A, B) over N queries: `both` queries both hit, `b_only` only B hits,
    `a_only` only A hits, the rest neither. The per-seed difference is 100 * (b_only - a_only) / N
    points. `shuffle` permutes which queries play which part (same counts)."""
    ha, hb = np.zeros(N, bool), np.zeros(N, bool)
    ha[:both] = hb[:both] = True
    hb[both:both + b_only] = True
    ha[both + b_only:both + b_only + a_only] = True
    if shuffle is not None:
        perm = np.random.default_rng(shuffle).permutation(N)
        ha, hb = ha[perm], hb[perm]
    return (pd.DataFrame({"video_id": VIDS, "hit@1": ha}), pd.DataFrame({"video_id": VIDS, "hit@1": hb}))


def half_width_closed_form(b_only: int, a_only: int, n: int) -> float:
    """1.96 * 100 * sqrt(var(d) / n) for d with b_only +1s and a_only -1s among n."""
    mean = (b_only - a_only) / n
    var = (b_only + a_only) / n - mean ** 2
    return 1.96 * 100.0 * math.sqrt(var / n)


def half(res) -> float:
    return (res["ci_high"] - res["ci_low"]) / 2


# seed 0: +10 points (60 B-only, 20 A-only), seed 1: 0 (40 / 40), seed 2: -10 (20 / 60)
SPREAD = {0: pair(60, 20), 1: pair(40, 40), 2: pair(20, 60)}
# three seeds with the same +10 point effect, the hits on different queries in each
SAME = {s: pair(60, 20, shuffle=s) for s in range(3)}


def split(runs):
    return {s: ab[0] for s, ab in runs.items()}, {s: ab[1] for s, ab in runs.items()}


def test_one_seed_is_the_query_bootstrap():
    a, b = split({0: SPREAD[0]})
    res = paired_test(a, b)
    assert res["diff"] == pytest.approx(10.0) and res["per_seed_diff"] == {0: pytest.approx(10.0)}
    assert math.isnan(res["seed_sd"])
    # closed form: var(d) = 80/400 - 0.1^2 = 0.19, half = 1.96 * 100 * sqrt(0.19/400) = 4.27 points.
    # 15%: a 2000-replicate percentile endpoint is off by ~0.06 sigma (2-3% of the half-width),
    # the values lie on a 0.25-point lattice, and the percentile interval of a mean of 400
    # three-valued draws is close to normal; 15% leaves room for all three.
    expected = half_width_closed_form(60, 20, N)
    assert expected == pytest.approx(4.272, abs=1e-3)
    assert half(res) == pytest.approx(expected, rel=0.15)
    assert (res["ci_low"] + res["ci_high"]) / 2 == pytest.approx(10.0, abs=1.0)
    assert res["ci_low"] > 0


def test_seed_spread_widens_the_ci_past_the_query_only_interval():
    a, b = split(SPREAD)
    res = paired_test(a, b)
    # per-seed differences by hand: (60-20)/400, (40-40)/400, (20-60)/400
    assert res["per_seed_diff"] == {0: pytest.approx(10.0), 1: pytest.approx(0.0), 2: pytest.approx(-10.0)}
    assert res["seed_sd"] == pytest.approx(10.0)  # sqrt((10^2 + 0 + 10^2) / 2)
    assert res["diff"] == pytest.approx(0.0, abs=1e-9)
    assert res["n_pairs"] == 3 * N and res["seeds"] == [0, 1, 2]
    # each of the +10 and -10 seeds alone excludes 0 (its half-width is ~4.3 points)
    for s, sign in ((0, 1), (2, -1)):
        alone = paired_test({s: a[s]}, {s: b[s]})
        assert sign * alone["ci_low"] > 0 and sign * alone["ci_high"] > 0
    # the query-only interval on the 1200 pooled pairs: 120 +1s and 120 -1s, var(d) = 0.2,
    # half = 1.96 * 100 * sqrt(0.2 / 1200) = 2.53 points
    query_only = half_width_closed_form(120, 120, 3 * N)
    assert query_only == pytest.approx(2.530, abs=1e-3)
    # the two-level CI: a replicate's seed draw is all +10 or all -10 with probability 1/27 = 3.7%
    # each (> 2.5%), so its 2.5% and 97.5% points sit near -10 and +10: much wider, holds 0
    assert res["ci_low"] < 0 < res["ci_high"]
    assert half(res) > 3 * query_only
    assert res["ci_low"] < -7 and res["ci_high"] > 7


def test_a_shared_effect_over_three_seeds_narrows_by_sqrt3():
    a, b = split(SAME)
    res = paired_test(a, b)
    assert res["per_seed_diff"] == {s: pytest.approx(10.0) for s in range(3)}
    assert res["seed_sd"] == pytest.approx(0.0, abs=1e-9)
    assert res["diff"] == pytest.approx(10.0) and res["ci_low"] > 0
    # Every seed's d holds the same multiset (60 +1s, 20 -1s), so whatever seeds are drawn, a
    # replicate is the mean of 3 x 400 draws from that one distribution: its SD is the
    # single-seed SD / sqrt(3) exactly, and the closed-form half-width is 4.272 / sqrt(3) = 2.467.
    single = half_width_closed_form(60, 20, N)
    assert half(res) == pytest.approx(single / math.sqrt(3), rel=0.15)
    # and against the measured single-seed CI (each side carries its own bootstrap noise, ~3%
    # on the ratio; the 15% allows for that and the lattice of the one-seed replicates)
    one = paired_test({0: a[0]}, {0: b[0]})
    assert half(res) / half(one) == pytest.approx(1 / math.sqrt(3), rel=0.15)


def test_identical_models_give_zero_and_a_zero_ci():
    a, _ = split(SPREAD)
    res = paired_test(a, a)
    assert res["diff"] == 0 and res["ci_low"] == 0 and res["ci_high"] == 0
    assert res["per_seed_diff"] == {0: 0.0, 1: 0.0, 2: 0.0} and res["seed_sd"] == 0
    assert res["p_mcnemar"] == 1.0 and (res["n_a_only"], res["n_b_only"]) == (0, 0)


def test_per_seed_diff_by_hand_with_unequal_seeds():
    # seed 3 on 400 queries: 10 B-only, 30 A-only -> (10 - 30) / 400 = -5 points; seed 7 on
    # queries 0-99 only: 50 both, 30 B-only, 10 A-only, 10 neither -> (30 - 10) / 100 = +20
    a3, b3 = pair(10, 30)
    a7, b7 = pair(30, 10, both=50)
    a7, b7 = a7.iloc[:100], b7.iloc[:100]
    res = paired_test({3: a3, 7: a7}, {3: b3, 7: b7})
    assert res["per_seed_diff"] == {3: pytest.approx(-5.0), 7: pytest.approx(20.0)}
    assert res["seed_sd"] == pytest.approx(25.0 / math.sqrt(2))  # |(-5) - 20| / sqrt(2)
    # pooled over the 500 pairs: (10 + 30 - 30 - 10) / 500 = 0
    assert res["n_pairs"] == 500 and res["diff"] == pytest.approx(0.0, abs=1e-9)
    assert (res["n_a_only"], res["n_b_only"]) == (40, 40)
    assert res["ci_low"] < 0 < res["ci_high"]


def test_deterministic_and_seeded():
    a, b = split(SPREAD)
    first, second = paired_test(a, b), paired_test(a, b)
    assert (first["ci_low"], first["ci_high"]) == (second["ci_low"], second["ci_high"])
    other = paired_test(a, b, rng_seed=1)
    assert other["ci_low"] < 0 < other["ci_high"]


def test_chunked_replicates_agree(monkeypatch):
    a, b = split(SAME)
    whole = paired_test(a, b)
    # force chunks of 7 replicates (3 seeds x 400 queries x 7 = 8400 cells): another RNG
    # stream, the same interval up to bootstrap noise
    monkeypatch.setattr(tables, "_BOOT_CELLS", 3 * N * 7)
    chunked = paired_test(a, b)
    assert half(chunked) == pytest.approx(half(whole), rel=0.15)
    assert chunked["ci_low"] > 0
