"""Default config of the character-level LSTM language-model experiment.

Sized to run every regimen for two seeds within 30 minutes on 2 CPU cores
(measured: 22 min on an idle 2-core machine, ``docs/language_model.md``): a
one-layer LSTM (128 units, embedding 64) on the first 50,000 characters of the
Shakespeare training plays, 750 steps of 32 streams x 32 characters (about 15
epochs).
Pilot runs (one seed, validation bits per character on 40k held-out
characters, every 150 steps) chose the subset: with 50k characters the
unregularized model overfits within the budget (3.15 at step 450, 3.22 at
step 750) and dropout q = 0.25 ends better (3.17); with 100k or 200k
characters nothing overfits in 750 steps and dropout only slows fitting;
with 20k-30k the model never gets below about 3.2. Validation and test are
the full held-out plays.

    python -m experiments.language_model --workdir /tmp/lm
    python -m experiments.language_model --workdir /tmp/lm \
        --config.steps=1500 --config.seeds='(0, 1, 2)'

Variant ``smoke``: each kind of regimen, about a minute.

A one-layer 16-unit LSTM, a few steps on a few thousand characters, short
validation/test prefixes, k = 2 instead of 8. (Compilation dominates its
time; the ``h{i}`` sites of deeper models are tested in tests/test_lstm.py.)

    python -m experiments.language_model --workdir /tmp/lm_smoke \
        --config experiments/configs/language_model.py:smoke

Variant ``transformer``: a decoder-only Transformer (2 blocks, width 64, 4
heads, feed-forward 256, learned positions, tied embedding; every site at
q = 0.1) on the first 100,000 training characters, 1,500 Adam steps of
32 x 64 characters with a 5 % warm-up and cosine decay to 0 (about 30
epochs), three seeds; none, dropout, explicit, explicit + implicit. Each
64-character chunk is its own context (no memory across chunks), for
training and evaluation alike. Pilot runs (one seed, 1,500 steps, best
validation bpc): with 100k characters the unregularized model overfits
(train 2.15, validation flat from step 700 at 3.116) and q = 0.1 ends
better (3.092), while q = 0.2 at every site underfits (3.222); with 200k
characters nothing overfits in 1,500 steps (none 2.863, dropout q = 0.1
3.014).

    python -m experiments.language_model --workdir /tmp/tf \
        --config experiments/configs/language_model.py:transformer

Variants ``transformer_smoke`` (tiny; the tests run it) and
``transformer_accel`` (6 blocks of width 384, context 256, all of
Shakespeare, 20,000 steps; for accelerators, not run here).

Variant ``accel``: the AWD-LSTM size on the whole Shakespeare set.

Three LSTM layers of 1150 units with a tied 400-dim embedding (the last layer
has 400 units), q = 0.4 at every site as in the LSTM code of Wei, Kakade & Ma
(2020), batch 20 x bptt 70 (their README command; fixed length here), and
SGD with lr 30, clipping 0.25 and weight decay 1.2e-6 (AWD-LSTM). Three
seeds. Meant for accelerators; not run by the tests and not timed yet.
DROPOUT_8 and its variants cost 8-11 forward/backward passes per step:
spread the regimens over machines with --config.regimens=... and merge the
runs/<regimen>/ folders (see docs/language_model.md).

    python -m experiments.language_model --workdir /tmp/lm_accel \
        --config experiments/configs/language_model.py:accel
"""

import ml_collections

from experiments.configs import select_variant
from ml_collections import config_dict

ALL_REGIMENS = (
  "none,dropout_1,dropout_2,dropout_4,dropout_8,"
  "dropout_8_fix_noise,dropout_8_implicit,explicit,"
  "explicit_implicit,explicit_implicit_locked"
)


def _default():
  c = ml_collections.ConfigDict()
  # --- data -----------------------------------------------------------------
  c.corpus = "shakespeare"  # any dropjax.data.text.load_corpus name
  c.train_tokens = 50_000  # first N training tokens (0: all)
  c.curve_tokens = 30_000  # validation prefix for the curve (0: all)
  c.eval_tokens = 0  # val/test tokens for final numbers (0: all)
  c.batch_size = 32  # parallel streams
  c.bptt = 32  # fixed chunk length (TBPTT)
  c.eval_batch_size = 128
  c.eval_bptt = 128
  # --- model ----------------------------------------------------------------
  c.model = ml_collections.ConfigDict(
    dict(
      embed_dim=64,
      hidden_size=128,
      num_layers=1,
      tie_weights=False,
      forget_bias=1.0,
    )
  )
  # Drop rates of the sites (AWD-LSTM: dropouti, dropouth, dropout, wdrop).
  c.rates = ml_collections.ConfigDict(
    dict(emb=0.25, hidden=0.25, out=0.25, weight=0.25)
  )
  # --- optimisation ---------------------------------------------------------
  c.optimizer = "adam"  # "adam" or "sgd"
  c.learning_rate = 1e-2
  c.momentum = 0.0  # sgd only
  c.clip_norm = 1.0  # global-norm clipping (AWD-LSTM: 0.25)
  c.weight_decay = 0.0
  c.steps = 750
  c.chunk_size = 50  # steps per jit call
  c.eval_every = 2  # curve point every this many calls
  c.checkpoint_every = 3  # orbax checkpoint every this many calls
  # --- regimens -------------------------------------------------------------
  # Comma-separated: none, dropout_K, dropout_K_fix_noise, dropout_K_implicit,
  # explicit, implicit, explicit_implicit; the last three with _locked treat
  # the locked sites (emb, h{i}, out) as locked (broadcast_axes).
  c.regimens = ALL_REGIMENS
  c.seeds = (0, 1)
  c.estimator = "sampled_label"  # explicit estimator
  c.explicit_scale = 1.0  # 1 = Taylor-faithful q/(2(1-q))
  c.implicit_scale = 1.0  # covariance scale (1 = DROPOUT_1's noise)
  # DROPOUT_k + implicit: covariance scale; None = 1 - 1/k.
  c.dropout_k_implicit_scale = config_dict.placeholder(float)
  c.devices = 0  # 0 = all local devices (streams sharded over them)
  c.progress = True
  return c


def _smoke() -> ml_collections.ConfigDict:
  """Smoke variant: each kind of regimen, about a minute."""
  c = _default()
  c.train_tokens = 4_000
  c.curve_tokens = 1_500
  c.eval_tokens = 3_000
  c.batch_size = 4
  c.bptt = 8
  c.eval_batch_size = 8
  c.eval_bptt = 32
  c.model.embed_dim = 8
  c.model.hidden_size = 16
  c.model.num_layers = 1
  c.steps = 4
  c.chunk_size = 2
  c.eval_every = 1  # a curve point after each call
  c.checkpoint_every = 1
  # One regimen per kind of objective (explicit alone shares its code path
  # with explicit_implicit and is left out to save a compilation).
  c.regimens = (
    "none,dropout_1,dropout_2,dropout_2_fix_noise,"
    "dropout_2_implicit,explicit_implicit,explicit_implicit_locked"
  )
  c.progress = False
  return c


def _accel() -> ml_collections.ConfigDict:
  """Accelerator variant: AWD-LSTM size, all of Shakespeare."""
  c = _default()
  c.train_tokens = 0  # all 4.2M training characters
  c.curve_tokens = 100_000
  c.eval_tokens = 0
  c.batch_size = 20
  c.bptt = 70
  c.eval_batch_size = 10
  c.eval_bptt = 140
  c.model.embed_dim = 400
  c.model.hidden_size = 1150
  c.model.num_layers = 3
  c.model.tie_weights = True
  c.model.forget_bias = 0.0
  c.rates.emb = 0.4
  c.rates.hidden = 0.4
  c.rates.out = 0.4
  c.rates.weight = 0.4
  c.optimizer = "sgd"
  c.learning_rate = 30.0
  c.clip_norm = 0.25
  c.weight_decay = 1.2e-6
  c.steps = 60_000  # ~20 epochs of 4.2M chars at 20 x 70
  c.chunk_size = 500
  c.eval_every = 4
  c.checkpoint_every = 4
  c.seeds = (0, 1, 2)
  return c


def _transformer() -> ml_collections.ConfigDict:
  """Transformer variant: a small decoder-only Transformer on Shakespeare."""
  c = _default()
  c.train_tokens = TRANSFORMER_TRAIN_TOKENS
  c.curve_tokens = 30_000
  c.eval_tokens = 0
  c.batch_size = 32
  c.bptt = 64
  c.eval_batch_size = 128
  c.eval_bptt = 64  # the training context (no memory across chunks)
  c.model = ml_collections.ConfigDict(
    dict(
      arch="transformer",
      embed_dim=64,
      num_heads=4,
      num_layers=2,
      ff_dim=256,
      max_len=64,
      positions="learned",
      tie_weights=True,
    )
  )
  # Drop rates per site kind (Transformer-XL: dropout at emb/res/ff/final,
  # dropatt at the attention probabilities).
  c.rates = ml_collections.ConfigDict(
    dict(emb=0.1, att=0.1, res=0.1, ff=0.1, final=0.1)
  )
  c.optimizer = "adam"
  c.learning_rate = 3e-3
  c.warmup_fraction = 0.05  # then cosine decay to 0
  c.clip_norm = 1.0
  c.steps = TRANSFORMER_STEPS
  c.chunk_size = 50
  c.eval_every = 2
  c.checkpoint_every = 4
  c.regimens = "none,dropout_1,explicit,explicit_implicit"
  c.seeds = (0, 1, 2)
  return c


def _transformer_smoke() -> ml_collections.ConfigDict:
  """Transformer smoke variant: each kind of regimen, tiny, a minute."""
  c = _transformer()
  c.train_tokens = 4_000
  c.curve_tokens = 1_500
  c.eval_tokens = 3_000
  c.batch_size = 4
  c.bptt = 8
  c.eval_batch_size = 8
  c.eval_bptt = 8
  c.model.embed_dim = 8
  c.model.num_heads = 2
  c.model.num_layers = 1
  c.model.ff_dim = 16
  c.model.max_len = 8
  c.steps = 4
  c.chunk_size = 2
  c.eval_every = 1
  c.checkpoint_every = 1
  c.regimens = "none,dropout_1,explicit_implicit"
  c.seeds = (0, 1)
  c.progress = False
  return c


def _transformer_accel() -> ml_collections.ConfigDict:
  """Transformer accelerator variant: larger model, all of Shakespeare."""
  c = _transformer()
  c.train_tokens = 0
  c.curve_tokens = 100_000
  c.batch_size = 64
  c.bptt = 256
  c.eval_bptt = 256
  c.model.embed_dim = 384
  c.model.num_heads = 6
  c.model.num_layers = 6
  c.model.ff_dim = 1536
  c.model.max_len = 256
  c.rates.emb = c.rates.att = c.rates.res = c.rates.ff = c.rates.final = 0.1
  c.learning_rate = 1e-3
  c.steps = 20_000
  c.chunk_size = 500
  c.eval_every = 2
  c.regimens = "none,dropout_1,dropout_8,explicit,explicit_implicit"
  return c


TRANSFORMER_TRAIN_TOKENS = 100_000
TRANSFORMER_STEPS = 1500

VARIANTS = {
  "default": _default,
  "smoke": _smoke,
  "accel": _accel,
  "transformer": _transformer,
  "transformer_smoke": _transformer_smoke,
  "transformer_accel": _transformer_accel,
}


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  """The config of one variant (default, smoke, accel, transformer,
  transformer_smoke, transformer_accel).

  Raises:
    ValueError: an unknown variant (the message lists the valid ones).
  """
  return select_variant(VARIANTS, variant)
