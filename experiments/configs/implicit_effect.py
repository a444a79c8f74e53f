"""Config of the implicit-effect experiment (Wei et al. §3, Algorithm 1).

    python -m experiments.implicit_effect --workdir runs/implicit_effect
    python -m experiments.implicit_effect --workdir /tmp/ie_smoke \
        --config experiments/configs/implicit_effect.py:smoke

The DROPOUT_k matrix (k = 1, 2, 4, 8; DROPOUT_8 + fix-noise, + implicit;
explicit alone; none; DROPOUT_1 on 8x the batch) in eight cells: the
Fashion-MNIST MLP and the character LSTM, each under SGD and Adam, each at
two training-set sizes, three seeds. ``cells_to_run`` selects cells (e.g.
``--config.cells_to_run=lstm_sgd_small,lstm_adam_small``).

Sizes are chosen so that the unregularized model overfits within the
budget at the small size (its validation curve turns up) and the whole
default fits about an hour on 2 CPU cores: the MLP is 784-256-256-10 at
q = 0.5 (two sites); the LSTM 1 x 128 (embedding 32) at q = 0.25 at every
site, on 16 streams of 32 characters. SGD follows the paper's AWD-LSTM
recipe for the LSTM (plain SGD, a large learning rate, gradient clipping at
0.25); the MLP's SGD has momentum 0.9 (the main job's optimizer code). Every
run uses the main job's warm-up + cosine learning-rate schedule (MLP) or a
constant rate (LSTM), and keeps its best-validation parameters.

Variant ``smoke``: two tiny cells (one per model), two seeds, every
regimen; for the tests.
"""

import ml_collections

from experiments.configs import select_variant

REGIMENS = (
  "none",
  "dropout_1",
  "dropout_2",
  "dropout_4",
  "dropout_8",
  "dropout_8_fix_noise",
  "dropout_8_implicit",
  "explicit",
  "dropout_1_batch8",
)


def _cell(model, optimizer, learning_rate, train_size, steps, clip_norm=0.0):
  return ml_collections.ConfigDict(
    dict(
      model=model,
      optimizer=optimizer,
      learning_rate=learning_rate,
      train_size=train_size,
      steps=steps,
      clip_norm=clip_norm,
    )
  )


def _default() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.regimens = REGIMENS
  c.seeds = (0, 1, 2)
  c.mlp = ml_collections.ConfigDict(
    dict(
      layer_sizes=(784, 256, 256, 10),
      rate=0.5,
      batch_size=64,
      chunk_size=100,
      eval_every=1,
      train_eval_size=1000,
    )
  )
  c.lstm = ml_collections.ConfigDict(
    dict(
      embed_dim=32,
      hidden_size=128,
      num_layers=1,
      rate=0.25,
      batch_size=16,
      bptt=32,
      curve_tokens=16_384,
      eval_tokens=65_536,
      eval_batch_size=64,
      eval_bptt=128,
      chunk_size=50,
      eval_every=2,
      checkpoint_every=4,
    )
  )
  c.cells = ml_collections.ConfigDict(
    dict(
      mlp_adam_small=_cell("mlp", "adam", 1e-3, 1000, 800),
      mlp_sgd_small=_cell("mlp", "sgd", 0.05, 1000, 800),
      mlp_adam_large=_cell("mlp", "adam", 1e-3, 4000, 1600),
      mlp_sgd_large=_cell("mlp", "sgd", 0.05, 4000, 1600),
      lstm_adam_small=_cell("lstm", "adam", 1e-2, 20_000, 600, 1.0),
      lstm_sgd_small=_cell("lstm", "sgd", 10.0, 20_000, 600, 0.25),
      lstm_adam_large=_cell("lstm", "adam", 1e-2, 100_000, 600, 1.0),
      lstm_sgd_large=_cell("lstm", "sgd", 10.0, 100_000, 600, 0.25),
    )
  )
  c.cells_to_run = tuple(c.cells.keys())
  c.progress = True
  return c


def _smoke() -> ml_collections.ConfigDict:
  c = _default()
  c.seeds = (0, 1)
  c.mlp.layer_sizes = (784, 16, 10)
  c.mlp.batch_size = 16
  c.mlp.chunk_size = 10
  c.mlp.train_eval_size = 200
  c.lstm.embed_dim = 8
  c.lstm.hidden_size = 16
  c.lstm.batch_size = 4
  c.lstm.bptt = 8
  c.lstm.curve_tokens = 1024
  c.lstm.eval_tokens = 2048
  c.lstm.eval_batch_size = 8
  c.lstm.eval_bptt = 32
  c.lstm.chunk_size = 2
  c.lstm.eval_every = 1
  c.lstm.checkpoint_every = 1
  c.cells = ml_collections.ConfigDict(
    dict(
      mlp_sgd=_cell("mlp", "sgd", 0.05, 200, 20),
      lstm_sgd=_cell("lstm", "sgd", 2.0, 4000, 4, 0.25),
    )
  )
  c.cells_to_run = ("mlp_sgd", "lstm_sgd")
  c.progress = False
  return c


VARIANTS = {"default": _default, "smoke": _smoke}


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  """The config of one variant (default, smoke).

  Raises:
    ValueError: an unknown variant (the message lists the valid ones).
  """
  return select_variant(VARIANTS, variant)
