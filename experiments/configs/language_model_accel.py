"""Accelerator config: the paper's AWD-LSTM size on the whole Shakespeare set.

Three LSTM layers of 1150 units with a tied 400-dim embedding (the last layer
has 400 units), q = 0.4 at every site as in the LSTM code of Wei, Kakade & Ma
(2020), batch 20 x bptt 70 (their README command; fixed length here), and
SGD with lr 30, clipping 0.25 and weight decay 1.2e-6 (AWD-LSTM). Three
seeds. Meant for accelerators; not run by the tests and not timed yet.
DROPOUT_8 and its variants cost 8-11 forward/backward passes per step:
spread the regimens over machines with --config.regimens=... and merge the
runs/<regimen>/ folders (see docs/language_model.md).

    python -m experiments.language_model --workdir /tmp/lm_accel \
        --config experiments/configs/language_model_accel.py
"""

from experiments.configs import language_model


def get_config():
  c = language_model.get_config()
  c.train_tokens = 0                # all 4.2M training characters
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
  c.steps = 60_000                  # ~20 epochs of 4.2M chars at 20 x 70
  c.chunk_size = 500
  c.eval_every = 4
  c.checkpoint_every = 4
  c.seeds = (0, 1, 2)
  return c
