"""Smoke config of the language-model experiment: each kind of regimen, ~1 min.

A one-layer 16-unit LSTM, a few steps on a few thousand characters, short
validation/test prefixes, k = 2 instead of 8. (Compilation dominates its
time; the ``h{i}`` sites of deeper models are tested in tests/test_lstm.py.)

    python -m experiments.language_model --workdir /tmp/lm_smoke \
        --config experiments/configs/language_model_smoke.py
"""

from experiments.configs import language_model


def get_config():
  c = language_model.get_config()
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
  c.eval_every = 1                  # a curve point after each call
  c.checkpoint_every = 1
  # One regimen per kind of objective (explicit alone shares its code path
  # with explicit_implicit and is left out to save a compilation).
  c.regimens = ("none,dropout_1,dropout_2,dropout_2_fix_noise,"
                "dropout_2_implicit,explicit_implicit")
  c.progress = False
  return c
