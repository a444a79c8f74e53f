"""Seed statistics shared by the experiment reports.

One implementation of the numbers every report's verdicts rest on: the mean,
sample standard deviation (``ddof=1``) and count of a metric over seeds, the
standard error of a difference of two seed means
``sqrt(s1^2 / n1 + s2^2 / n2)``, and the 2-SE rule. The reports differ in how
they treat one seed or a zero standard error; those choices are arguments
here, so each report keeps its documented rule.
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple

import numpy as np


class Summary(NamedTuple):
  """Mean, sample SD and count of one metric over seeds."""

  mean: float
  sd: float
  n: int


def summarize(values: Iterable, *, single_sd: float = 0.0) -> Summary:
  """Mean, sample SD (``ddof=1``) and count of ``values`` (``None`` dropped).

  Args:
    values: numbers; ``None`` entries are ignored.
    single_sd: the SD reported for a single value (0 or NaN).

  Returns:
    ``Summary``; ``(nan, nan, 0)`` without values.
  """
  v = np.asarray([x for x in values if x is not None], dtype=np.float64)
  if v.size == 0:
    return Summary(float("nan"), float("nan"), 0)
  sd = float(v.std(ddof=1)) if v.size > 1 else single_sd
  return Summary(float(v.mean()), sd, int(v.size))


def se_of_difference(
  sd1: float, n1: int, sd2: float, n2: int, *, min_n: int = 1
) -> float:
  """Standard error of a difference of two seed means.

  ``sqrt(sd1^2 / n1 + sd2^2 / n2)`` (Welch); NaN when either side has fewer
  than ``min_n`` values.
  """
  if n1 < max(min_n, 1) or n2 < max(min_n, 1):
    return float("nan")
  return math.sqrt(sd1**2 / n1 + sd2**2 / n2)


def is_clear(
  diff: float,
  se: float,
  *,
  n_se: float = 2.0,
  min_effect: float = 0.0,
  zero_se_ok: bool = False,
  unknown_se_ok: bool = False,
) -> bool:
  """The 2-SE rule: ``|diff| > n_se * se`` and ``|diff| > min_effect``.

  Args:
    diff: the difference of the two means.
    se: its standard error.
    n_se: the threshold in standard errors.
    min_effect: a difference at or below this is never clear.
    zero_se_ok: whether ``se == 0`` may give a clear difference (then any
      ``|diff| > min_effect`` is); otherwise ``se > 0`` is required.
    unknown_se_ok: whether a non-finite ``se`` (e.g. one seed) may give a
      clear difference (then on ``|diff| > min_effect`` alone).
  """
  if not math.isfinite(se):
    return bool(unknown_se_ok and abs(diff) > min_effect)
  if se == 0 and not zero_se_ok:
    return False
  return bool(abs(diff) > n_se * se and abs(diff) > min_effect)


def paired_difference(a: Iterable, b: Iterable) -> Summary:
  """Mean, standard error and count of the per-seed differences ``a - b``.

  ``a`` and ``b`` are aligned by seed; pairs with a ``None`` are dropped.
  The ``sd`` field holds the standard error of the mean difference (NaN for
  fewer than two pairs).
  """
  d = [x - y for x, y in zip(a, b) if x is not None and y is not None]
  s = summarize(d, single_sd=float("nan"))
  se = s.sd / math.sqrt(s.n) if s.n > 1 else float("nan")
  return Summary(s.mean, se, s.n)
