"""Config of the dropout-schedule experiment (the main job's code, this config).

    python -m experiments.compare --workdir runs/schedules \
        --config experiments/configs/schedules.py

Early dropout (Liu et al., "Dropout Reduces Underfitting", ICML 2023,
arXiv:2303.01500) keeps dropout for the first part of training only. They
report that it helps models that *underfit*, where standard dropout hurts.
This config asks that question on the full Fashion-MNIST training set
(55,000 examples; 5,000 held out for validation) at a CPU budget of 1200
steps (2.8 epochs), where the main job's MLP underfits with dropout, and
asks whether the analytic replacement on the same schedule behaves like early
dropout:

* ``none``, ``dropout`` (q = 0.5 at every hidden site, all the way),
  ``early_dropout`` (q = 0.5 for the first 20% of the steps, then none:
  ``dropjax.schedules.early`` inside the jitted chunk, one compiled program),
  ``explicit_implicit`` (q = 0.5, Taylor-faithful scales 1, all the way) and
  ``early_explicit_implicit`` (the same terms on the early schedule: the
  coefficients follow q(t));
* five seeds (the same initialisation and data order in every regimen); best-
  validation-accuracy parameters for the primary comparison, as in the main
  job; the report's paired differences and verdicts.

The rate and the cut-off are fixed, not tuned: q = 0.5 is the main job's
analytic rate and the classic hidden-layer rate; 20% is close to Liu et al.'s
cut-off for early dropout (50 of 300 epochs, 17%). The learning-rate schedule
is the main job's (5% warm-up, cosine to 0 from 1e-3).

Variant ``smoke``: every regimen on 1,000 examples for 40 steps (the tests).
"""

import ml_collections

from experiments.configs import compare as _compare
from experiments.configs import select_variant

RATE = 0.5
UNTIL = 0.2
HPARAMS = {
  "none": {},
  "dropout": {"rate": RATE},
  "early_dropout": {"rate": RATE, "until": UNTIL},
  "explicit_implicit": {"explicit_scale": 1.0, "implicit_scale": 1.0},
  "early_explicit_implicit": {
    "explicit_scale": 1.0,
    "implicit_scale": 1.0,
    "until": UNTIL,
  },
}


def _schedules(
  c: ml_collections.ConfigDict, setting
) -> ml_collections.ConfigDict:
  """A main-job config turned into this experiment, with one setting."""
  c.title = (
    "Early dropout and its analytic replacement on the full training set"
  )
  c.hparams_note = (
    "Hyperparameters are fixed, not tuned (the tables list them): one rate "
    "q at every hidden site for every dropout-like regimen, the early "
    "regimens drop for the first `until` fraction of the steps, the "
    "analytic scales are 1 (Taylor-faithful);"
  )
  c.analytic_rate = RATE
  c.regimens = tuple(HPARAMS)
  c.settings = ("full",)
  c.full = setting
  c.diagnostics.regimens = ()
  return c


def _default() -> ml_collections.ConfigDict:
  c = _schedules(
    _compare.get_config("default"),
    _compare._setting(0, 1200, 1, HPARAMS),  # 0 = every example
  )
  c.seeds = (0, 1, 2, 3, 4)
  return c


def _smoke() -> ml_collections.ConfigDict:
  """The main job's smoke config (two seeds, a 784-32-32-10 MLP), 1000
  examples, 40 steps."""
  return _schedules(
    _compare.get_config("smoke"), _compare._setting(1000, 40, 1, HPARAMS)
  )


VARIANTS = {"default": _default, "smoke": _smoke}


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  """The config of one variant (default, smoke).

  Raises:
    ValueError: an unknown variant (the message lists the valid ones).
  """
  return select_variant(VARIANTS, variant)
