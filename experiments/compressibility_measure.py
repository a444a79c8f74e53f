"""Measurements of trained nets for the compressibility study.

Test-set evaluation, activation sparsity, prune-accuracy curves,
clusterability, weight-graph statistics and the sparsity report of one net
or a stack of nets: what :mod:`experiments.compressibility` records per
(condition, seed) and stage. Reads parameters, never trains.
"""

from __future__ import annotations

import json
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from dropjax import analysis as an
from dropjax import train as djtrain
from dropjax.train import evaluation as djeval

LOSS = "softmax_cross_entropy"
NEAR_ISOLATED = 1e-6  # degree below this times the median degree


def _json_safe(obj):
  """A JSON round trip: tuples become lists, float keys strings."""
  return json.loads(json.dumps(obj, default=djtrain.files.to_builtin))


class Measurer:
  """Test-set evaluation, activation sparsity and the analysis stages.

  Compiles the evaluation once and reuses it for every condition, seed and
  pruned copy.
  """

  def __init__(self, apply, test: tuple[np.ndarray, np.ndarray], config):
    self.apply = apply
    self.config = config
    xb, yb, mask, n = djeval.batch_eval_arrays(
      test[0], test[1], int(config.eval_batch_size)
    )
    self._eval_args = (jnp.asarray(xb), jnp.asarray(yb), jnp.asarray(mask), n)
    self._eval = jax.jit(
      djeval.stacked_eval_fn(apply, LOSS, None), static_argnums=4
    )
    self._x_test = jnp.asarray(test[0])

    def act_stats(params, x):
      hs = []

      def rec(name, h):
        hs.append(h.reshape(h.shape[0], -1))
        return h

      apply(params, x, rec)
      h = jnp.concatenate(hs, axis=1)
      return (
        jnp.sum(h <= 0, axis=0),
        jnp.any(h > 0, axis=0),
        jnp.sum(h, axis=0),
      )

    self._acts = jax.jit(jax.vmap(act_stats, in_axes=(0, None)))

  def evaluate(self, params_stacked) -> dict[str, list[float]]:
    """``{"accuracy": [S], "loss": [S]}`` on the test set."""
    out = self._eval(params_stacked, *self._eval_args)
    return {k: np.asarray(v).tolist() for k, v in out.items()}

  def accuracy(self, params) -> float:
    """Test accuracy of one (unstacked) net."""
    p = jax.tree.map(lambda a: jnp.asarray(a)[None], params)
    return float(self.evaluate(p)["accuracy"][0])

  def activations(self, params_stacked) -> list[dict]:
    """Per seed: the share of zero ReLU outputs over the test set and hidden
    units, the share of dead units (zero on every test image) and the mean
    activation."""
    n = self._x_test.shape[0]
    bs = int(self.config.eval_batch_size)
    zeros = alive = total = None
    for i in range(0, n, bs):
      z, a, t = self._acts(params_stacked, self._x_test[i : i + bs])
      zeros = z if zeros is None else zeros + z
      alive = a if alive is None else alive | a
      total = t if total is None else total + t
    zeros, alive, total = (np.asarray(v) for v in (zeros, alive, total))
    units = zeros.shape[1]
    return [
      {
        "zero_fraction": float(zeros[j].sum() / (n * units)),
        "dead_unit_fraction": float(1.0 - alive[j].mean()),
        "mean_activation": float(total[j].sum() / (n * units)),
        "n_hidden_units": int(units),
      }
      for j in range(zeros.shape[0])
    ]

  def prune_curves(self, params) -> dict[str, dict]:
    """Weight- and unit-level one-shot prune-accuracy curves of one net."""
    cfg = self.config.curves
    out = {}
    for gran in ("weight", "unit"):
      curve = an.prune_curve(
        params,
        self.accuracy,
        tuple(float(f) for f in cfg.fractions),
        granularity=gran,
        exclude=tuple(int(i) for i in cfg.exclude),
      )
      out[gran] = {
        "fractions": curve.fractions.tolist(),
        "accuracies": curve.accuracies.tolist(),
        "achieved_sparsity": curve.achieved_sparsity.tolist(),
        "baseline": curve.baseline,
        "auc": curve.auc,
        "max_fraction_within": curve.max_fraction_within(float(cfg.tolerance)),
        "tolerance": float(cfg.tolerance),
      }
    return out

  def clusterability(self, params, key) -> dict:
    """n-cut of one net against its shuffles, as a JSON-ready dict."""
    cfg = self.config.cluster
    t0, c0 = time.perf_counter(), time.process_time()
    res = an.clusterability(
      params,
      n_clusters=int(cfg.n_clusters),
      n_shuffles=int(cfg.n_shuffles),
      key=key,
      shuffle=str(cfg.shuffle),
      n_jobs=int(cfg.n_jobs),
    )
    return {
      "ncut": res.ncut,
      "shuffled_mean": res.shuffled_mean,
      "shuffled_std": res.shuffled_std,
      "z": res.z,
      "p_value": res.p_value,
      "min_p_value": res.min_p_value,
      "significant": res.significant,
      "n_nodes": res.n_nodes,
      "n_clusters": res.n_clusters,
      "n_shuffles": int(cfg.n_shuffles),
      "shuffle": res.shuffle,
      "shuffled_ncuts": res.shuffled_ncuts.tolist(),
      "seconds": time.perf_counter() - t0,
      # CPU of this process only: complete when n_jobs == 1.
      "cpu_seconds": time.process_time() - c0,
      "n_jobs": int(cfg.n_jobs),
    }


def cluster_key(seed: int, condition: str, stage: str):
  """The clustering key of one (seed, condition, stage)."""
  tag = zlib.crc32(f"{condition}/{stage}".encode()) & 0x7FFFFFFF
  return jax.random.fold_in(jax.random.key(int(seed)), tag)


def graph_stats(params) -> dict:
  """Degree statistics of the weight graph that clusterability uses.

  Isolated nodes (all weights exactly zero) are deleted by the protocol.
  Nodes whose weights are tiny but not zero stay: their degree can be many
  orders of magnitude below the median (e.g. dead ReLU units whose weights an
  L2 penalty under Adam shrinks towards 0). Spectral clustering tends to
  give such a node a cluster of its own, whose ``cut / (vol + 1e-8)`` is
  then close to 0, which lowers the n-cut without any modular structure.

  Returns:
    ``{"n_nodes", "n_isolated_removed", "near_isolated_nodes" (degree <
    1e-6 x median), "min_degree_ratio" (min / median degree)}``.
  """
  reduced, mask = an.remove_isolated_nodes(params)
  deg = np.asarray(an.weight_graph(reduced).sum(axis=1)).ravel()
  med = float(np.median(deg))
  return {
    "n_nodes": int(deg.size),
    "n_isolated_removed": int((~mask).sum()),
    "near_isolated_nodes": int(np.sum(deg < NEAR_ISOLATED * med)),
    "min_degree_ratio": float(deg.min() / med) if med > 0 else 0.0,
  }


def sparsity_entry(params) -> dict:
  """:func:`dropjax.analysis.sparsity_report` of all kernels, JSON-ready."""
  return _json_safe(an.sparsity_report(params))
