"""Default config of the compressibility study ("does dropout make nets simpler?").

    python -m experiments.compressibility --workdir runs/compressibility
    python -m experiments.compressibility --workdir runs/compressibility \
        --config.seeds=0,1 --config.cluster.n_shuffles=20

Protocol (Filan et al. 2021's MLP recipe, arXiv:2103.03386; src/train_nn.py
in dfilan/clusterability_in_neural_networks):
MLP 784-256-256-256-256-10 on all 60k Fashion-MNIST training images, Adam
1e-3, batch 128, 20 epochs (phase 1, the *unpruned* net), then 20 epochs of
gradual magnitude pruning (phase 2, the *pruned* net): per-layer masks over
every dense kernel (first and output layer included), cubic schedule from
0.5 to 0.9 sparsity, masks updated every 10 steps (TF-MOT semantics). Each
condition keeps its regulariser in phase 2. Eight conditions x 3 seeds
(vmapped). Measurements: test accuracy, sparsity metrics, one-shot weight and
unit prune-accuracy curves of the unpruned net (first and last layer
excluded), clusterability (K = 12, 50 layer shuffles) of both nets.

Targeted dropout settings (Gomez et al. 2019, Table 2 grid):

* weight level: alpha = 0.66, gamma = 0.75 -- the paper's headline setting
  (Tables 2, 5 and 6). The flatter alpha = 0.75, gamma = 0.90 column owes its
  flatness to the evaluation-time gamma-mask of the authors' conv code; the
  MLP here is evaluated dense, as their dense layers are.
* unit level: alpha = 0.90, gamma = 0.75 -- the most prune-robust unit
  setting of Table 2 (about 90 % accuracy up to 70 % unit pruning, against
  75 % for alpha = 0.66), and an instance of the paper's claim that a higher
  alpha on the same gamma gives more robustness. Units are dropped whole (the
  paper as written; ``dropjax.targeted_unit_dropout`` default).

Measured wall time on 2 idle CPU cores: 43 min for the whole study
(docs/compressibility.md §9); on a machine shared with other jobs expect
2-3 times that.

Variant ``smoke``: real data, about a minute.

    python -m experiments.compressibility --workdir /tmp/cmp_smoke \
        --config experiments/configs/compressibility.py:smoke

A tiny MLP (784-32-32-10) on 2000 Fashion-MNIST training images, 1 epoch of
training and 1 epoch of gradual pruning (15 steps each, masks every 5 steps),
two conditions (control, dropout) x two seeds, 3 shuffles per clustering and
a few prune fractions. It exercises every stage and file of the study; its
numbers mean nothing.
"""

import ml_collections

from experiments.configs import select_variant

CONDITIONS = (
  "control",
  "dropout",
  "explicit_implicit",
  "explicit",
  "l1",
  "l2",
  "targeted_weight",
  "targeted_unit",
)


def _default() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  c.data.source = "fashion_mnist"  # or "idx:/dir", "tfds:mnist"
  c.data.data_dir = ""  # "" = the source's default location
  c.data.validation_size = 0  # Filan et al. train on all 60k images
  c.data.train_size = 0  # 0 = every remaining training image
  c.data.split_seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.layer_sizes = (784, 256, 256, 256, 256, 10)

  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.batch_size = 128
  c.epochs = 20  # phase 1: ordinary training
  c.prune_epochs = 20  # phase 2: gradual magnitude pruning

  c.pruning = ml_collections.ConfigDict()
  c.pruning.initial_sparsity = 0.5
  c.pruning.final_sparsity = 0.9
  c.pruning.power = 3.0
  c.pruning.frequency = 10  # mask update period in steps
  c.pruning.end_step = -1  # -1: the last update step of phase 2

  c.seeds = (0, 1, 2)
  c.conditions = CONDITIONS

  # One block per condition: the dropjax regimen and its arguments.
  c.condition_specs = ml_collections.ConfigDict()
  specs = c.condition_specs
  specs.control = dict(regimen="none")
  specs.dropout = dict(regimen="dropout", rate=0.5)
  specs.explicit_implicit = dict(regimen="explicit_implicit", rate=0.5)
  specs.explicit = dict(regimen="explicit", rate=0.5)
  specs.l1 = dict(regimen="l1", coef=5e-5)
  specs.l2 = dict(regimen="l2", coef=5e-5)
  specs.targeted_weight = dict(
    regimen="targeted_weight", alpha=0.66, gamma=0.75
  )
  specs.targeted_unit = dict(regimen="targeted_unit", alpha=0.9, gamma=0.75)

  c.curves = ml_collections.ConfigDict()
  c.curves.fractions = (
    0.0,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    0.99,
  )
  c.curves.exclude = (0, -1)  # targeted dropout's protocol
  c.curves.tolerance = 0.01  # "within 1 pp" of the unpruned accuracy

  c.cluster = ml_collections.ConfigDict()
  c.cluster.n_clusters = 12
  c.cluster.n_shuffles = 50
  c.cluster.shuffle = "layer"
  c.cluster.n_jobs = 2  # worker processes for the shuffles

  c.verdict = ml_collections.ConfigDict()
  c.verdict.n_se = 2.0  # significant: |difference| > n_se * SE

  c.chunk_size = 0  # steps per jit call; 0 = one epoch
  c.checkpoint_every = 5  # phase-1 checkpoint every this many chunks
  c.eval_batch_size = 1000
  c.phase2_seed_offset = 1_000_000  # phase 2 draws data order/noise anew
  c.retry_failed = False  # re-run (condition, seed)s that hit NaN
  c.progress = True
  return c


def _smoke() -> ml_collections.ConfigDict:
  """Smoke config of the compressibility study: real data, about a minute."""
  c = _default()
  c.data.train_size = 2000
  c.model.layer_sizes = (784, 32, 32, 10)
  c.epochs = 1
  c.prune_epochs = 1
  c.pruning.frequency = 5
  c.seeds = (0, 1)
  c.conditions = ("control", "dropout")
  c.curves.fractions = (0.0, 0.5, 0.9)
  c.cluster.n_clusters = 4
  c.cluster.n_shuffles = 3
  c.cluster.n_jobs = 1
  c.checkpoint_every = 1
  c.progress = False
  return c


VARIANTS = {"default": _default, "smoke": _smoke}


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  """The config of one variant (default, smoke).

  Raises:
    ValueError: an unknown variant (the message lists the valid ones).
  """
  return select_variant(VARIANTS, variant)
