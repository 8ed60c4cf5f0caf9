"""The uncertainty of a trial's figures. BA, ASR and RA are each a proportion of test images (k
of n), so each carries a binomial 95 % interval: Wilson's score interval (scipy's
`binomtest(...).proportion_ci(method="wilson")`). Wilson rather than the normal approximation:
it stays inside [0, 1] and keeps its coverage near 0 and 1, where ASR after a defense and BA on
easy data live (the normal interval of 0 of 2,000 is [0, 0]; Wilson's is [0, 0.19 %]).

The interval is the test set's sampling noise alone: how far another draw of as many test images
could move the figure. It says nothing of the noise of training (seeds), which is larger here
(docs/FIDELITY.md): two trials whose intervals overlap are not shown to differ; two whose
intervals do not overlap may still swap places at another seed.

Over seeds (each its own backdoored model, teacher and defense), the noise of training is
measured: a table's mean over seeds carries its t interval (`t_halfwidth`), and a claim that one
defense beats another is a paired comparison over (attack, seed) cells with a stratified
bootstrap interval (`stratified_bootstrap`; sweep/claims.py).
"""
from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import numpy as np

LEVEL = 0.95


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """(low, high) of the Wilson score interval of k successes in n trials; NaN for n = 0."""
    if not n:
        return math.nan, math.nan
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def with_counts(metrics: dict[str, float], counts: dict[str, Optional[int]], counts_too: bool = True
                ) -> dict[str, float | int | None]:
    """`metrics` with, for each of them whose image count `counts` knows, its 95 % interval
    (`asr_lo`, `asr_hi`) and (`counts_too`) the counts behind it (`asr_k` of `asr_n`). A metric
    that is not a finite fraction (RA of a brought test set without labels) gets NaN bounds and no
    count."""
    out: dict[str, float | int | None] = dict(metrics)
    for name, value in metrics.items():
        n = counts.get(name)
        if n is None:
            continue
        finite = value is not None and math.isfinite(value) and n > 0
        k = round(value * n) if finite else None  # the fraction is k / n exactly: k comes back
        out[f"{name}_lo"], out[f"{name}_hi"] = wilson(k, n) if finite else (math.nan, math.nan)
        if counts_too:
            out[f"{name}_k"], out[f"{name}_n"] = k, (n if finite else None)
    return out


def t_halfwidth(values: list[float], level: float = LEVEL) -> float:
    """Half the width of the t interval of the mean of `values` (independent replicates: seeds);
    NaN under two values. Student's t, not the normal 1.96: with three seeds the mean's interval
    is t(0.975, 2) = 4.30 standard errors wide each side, 2.2 times the normal one."""
    n = len(values)
    if n < 2:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(values) / math.sqrt(n))


def stratified_bootstrap(strata: list["np.ndarray"], reps: int = 10_000, level: float = LEVEL, seed: int = 0
                         ) -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """The mean over strata of each stratum's mean, and its percentile bootstrap interval, each
    stratum resampled on its own (rows: replicates, e.g. seeds; columns: metrics). Returns
    (point, low, high), one value per column.

    This is rliable's `StratifiedBootstrap` (Agarwal et al., NeurIPS 2021: runs resampled within
    each task) written out in numpy: rliable builds on `arch`, whose 7.2 fails to import beside
    pandas 3 (a TypeError in its `deprecate_kwarg`, tried here on 2026-12-06), and the resampling
    is these few lines. The draw is seeded, so a report is the same each time it is made.

    A stratum's resamples come from its own few replicates: with three seeds the bootstrap's
    spread is about (n - 1) / n of the true one, so an interval here is, if anything, narrow;
    callers leave fewer than three replicates untested rather than read a near-empty interval."""
    import numpy as np

    rng = np.random.default_rng(seed)
    total = np.zeros((reps, strata[0].shape[1]))
    for x in strata:
        idx = rng.integers(0, len(x), size=(reps, len(x)))
        total += x[idx].mean(axis=1)
    total /= len(strata)
    point = np.mean([x.mean(axis=0) for x in strata], axis=0)
    tail = 100 * (1 - level) / 2
    return point, np.percentile(total, tail, axis=0), np.percentile(total, 100 - tail, axis=0)
