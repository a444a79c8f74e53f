"""Smoke config of the main job: every regimen, real data, about a minute.

Both settings use 1000 training examples so each regimen compiles once.

    python -m experiments.compare --workdir /tmp/smoke \
        --config experiments/configs/compare_smoke.py
"""

from experiments.configs import compare


def get_config():
  c = compare.get_config()
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
