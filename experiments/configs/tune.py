"""Config of the tuning run: every regimen's grid, on the validation split.

    python -m experiments.tune --workdir runs/tune

The main job's settings, model, optimizer and schedule
(``experiments/configs/compare.py``), trained on the tuning seeds (100 and
101, disjoint from the comparison's) at every point of each regimen's grid.
Every tunable regimen gets the same budget: six points. The analytic
regimens are built at q = ``analytic_rate`` (0.5), so their scales carry
the strength (the explicit coefficient ``scale * q / (2 (1 - q))`` is 0.5 x
the scale). The point with the highest mean best-validation accuracy over
the tuning seeds is chosen; the test split is never evaluated.

Variant ``smoke``: the main job's smoke settings, two points per regimen.
"""

import ml_collections

from experiments.configs import compare as compare_config
from experiments.configs import select_variant

GRID = {
  "none": {},
  "dropout": {"rate": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)},
  "gaussian_dropout": {"rate": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)},
  "explicit": {"explicit_scale": (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)},
  "implicit": {"implicit_scale": (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)},
  # 3 x 2 = six points, the same budget as the one-dimensional grids.
  "explicit_implicit": {
    "explicit_scale": (0.5, 1.0, 2.0),
    "implicit_scale": (0.5, 1.0),
  },
  "l2": {"l2": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)},
}


def _with_grid(c, grid):
  c.seeds = (100, 101)
  c.grid = ml_collections.ConfigDict(grid)
  for setting in ("n1000", "n5000", "full"):
    if setting in c:
      del c[setting]["hparams"]
  del c["diagnostics"]
  return c


def _default() -> ml_collections.ConfigDict:
  return _with_grid(compare_config.get_config("default"), GRID)


def _accel() -> ml_collections.ConfigDict:
  return _with_grid(compare_config.get_config("accel"), GRID)


def _smoke() -> ml_collections.ConfigDict:
  small = {
    r: {k: tuple(v[:2]) for k, v in axes.items()} for r, axes in GRID.items()
  }
  small["explicit_implicit"] = {
    "explicit_scale": (0.5, 1.0),
    "implicit_scale": (1.0,),
  }
  c = _with_grid(compare_config.get_config("smoke"), small)
  c.seeds = (100,)
  return c


VARIANTS = {"default": _default, "accel": _accel, "smoke": _smoke}


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  """The config of one variant (default, accel, smoke).

  Raises:
    ValueError: an unknown variant (the message lists the valid ones).
  """
  return select_variant(VARIANTS, variant)
