"""Smoke config of the compressibility study: real data, about a minute.

    python -m experiments.compressibility --workdir /tmp/cmp_smoke \
        --config experiments/configs/compressibility_smoke.py

A tiny MLP (784-32-32-10) on 2000 Fashion-MNIST training images, 1 epoch of
training and 1 epoch of gradual pruning (15 steps each, masks every 5 steps),
two conditions (control, dropout) x two seeds, 3 shuffles per clustering and
a few prune fractions. It exercises every stage and file of the study; its
numbers mean nothing.
"""

from experiments.configs import compressibility


def get_config():
  c = compressibility.get_config()
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
