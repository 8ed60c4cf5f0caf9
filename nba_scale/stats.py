"""The uncertainty of a trial's figures. BA, ASR and RA are each a proportion of test images (k
of n), so each carries a binomial 95 % interval: Wilson's score interval (scipy's
`binomtest(...).proportion_ci(method="wilson")`). Wilson rather than the normal approximation:
it stays inside [0, 1] and keeps its coverage near 0 and 1, where ASR after a defense and BA on
easy data live (the normal interval of 0 of 2,000 is [0, 0]; Wilson's is [0, 0.19 %]).

The interval is the test set's sampling noise alone: how far another draw of as many test images
could move the figure. It says nothing of the noise of training (seeds), which is larger here
(docs/FIDELITY.md): two trials whose intervals overlap are not shown to differ; two whose
intervals do not overlap may still swap places at another seed.
"""
from __future__ import annotations

import math
from typing import Optional

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
