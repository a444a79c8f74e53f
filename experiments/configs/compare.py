"""Default config of the main job: dropout vs its analytic replacement.

    python -m experiments.compare --workdir runs/compare
    python -m experiments.compare --workdir runs/compare \
        --config experiments/configs/compare.py --config.seeds=0,1 \
        --config.small.steps=3000

Eight regimens (none, dropout, DROPOUT_k, DROPOUT_k + fix-noise, DROPOUT_k +
implicit, explicit, explicit + implicit, L2) x 3 seeds x two settings: the
full Fashion-MNIST training set (55k after the 5k validation hold-out) and a
5k-example subset, where dropout matters most. MLP 784-256-256-256-256-10
(Filan et al.'s layout), q = 0.5 at the four hidden sites, Adam 1e-3,
batch 128. The step budgets are set so the whole job fits in about 20
minutes on 2 idle CPU cores: per step (3 seeds, vmapped), the eight regimens
together take about 0.43 s there (none 12 ms, dropout 15 ms, DROPOUT_8 about
100 ms and its two variants about 115 ms each, explicit + implicit 30 ms).
Measured wall times are in the README.

Variant ``smoke``: every regimen, real data, about a minute.

Both settings use 1000 training examples so each regimen compiles once.

    python -m experiments.compare --workdir /tmp/smoke \
        --config experiments/configs/compare.py:smoke
"""

import ml_collections

from experiments.configs import select_variant


def _default() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  c.data.source = "fashion_mnist"  # or "idx:/dir", "tfds:mnist", ...
  c.data.data_dir = ""  # "" = the source's default location
  c.data.validation_size = 5000
  c.data.split_seed = 0  # the validation hold-out and subsets
  c.data.train_eval_size = 5000  # training examples evaluated for the gap

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"
  c.model.layer_sizes = (784, 256, 256, 256, 256, 10)

  c.rate = 0.5  # drop rate q at every hidden site
  c.k = 8  # DROPOUT_k
  c.estimator = "sampled_label"  # explicit-regularizer estimator
  c.explicit_scale = 1.0  # 1 = Taylor-faithful q/(2(1-q))
  c.implicit_scale = 1.0  # 1 = DROPOUT_1's noise covariance
  c.l1 = 5e-5  # L1 regimen: coef * sum(|w|) (kernels)
  c.l2 = 5e-5  # L2 regimen: coef * sum(w^2) (kernels)
  c.regimens = (
    "none",
    "dropout",
    "dropout_k",
    "dropout_k_fix_noise",
    "dropout_k_implicit",
    "explicit",
    "explicit_implicit",
    "l2",
  )
  c.seeds = (0, 1, 2)

  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.batch_size = 128
  c.chunk_size = 100  # steps per jit call (one scan)

  # Settings: "full" uses every training example; "small" a seeded subset.
  c.settings = ("full", "small")
  c.full = ml_collections.ConfigDict()
  c.full.train_size = 0  # 0 = all 55k
  c.full.steps = 1200  # ~2.8 epochs
  c.full.eval_every = 3  # chunks between evaluations
  c.small = ml_collections.ConfigDict()
  c.small.train_size = 5000
  c.small.steps = 1000  # ~26 epochs
  c.small.eval_every = 2

  c.devices = 0  # 0 = all local devices
  c.progress = True
  return c


def _smoke() -> ml_collections.ConfigDict:
  """Smoke config of the main job: every regimen, real data, about a minute."""
  c = _default()
  c.model.layer_sizes = (784, 32, 32, 10)
  c.k = 2
  c.seeds = (0, 1)
  c.batch_size = 64
  c.chunk_size = 20
  c.data.train_eval_size = 500
  c.full.train_size = 1000
  c.full.steps = 40
  c.full.eval_every = 1
  c.small.train_size = 1000
  c.small.steps = 40
  c.small.eval_every = 1
  c.progress = False
  return c


VARIANTS = {"default": _default, "smoke": _smoke}


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  """The config of one variant (default, smoke).

  Raises:
    ValueError: an unknown variant (the message lists the valid ones).
  """
  return select_variant(VARIANTS, variant)
