"""Predictive metrics: NLL, accuracy, ECE (Guo et al. 2017) and bins."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dropjax import metrics


def reference_ece(probs, labels, m=15):
  """A literal loop over Guo et al.'s eq. (3) with right-closed bins."""
  conf = probs.max(1)
  pred = probs.argmax(1)
  n = len(labels)
  total = 0.0
  for b in range(m):
    lo, hi = b / m, (b + 1) / m
    inb = (conf > lo) & (conf <= hi)
    if b == 0:
      inb |= conf == 0
    if inb.any():
      acc = np.mean(pred[inb] == labels[inb])
      total += inb.sum() / n * abs(acc - conf[inb].mean())
  return total


def _data(n=257, k=5, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, k)) * 3
  labels = rng.integers(0, k, size=n)
  return logits, labels


def test_ece_matches_a_literal_loop():
  logits, labels = _data()
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1))
  got = metrics.expected_calibration_error(jnp.asarray(logits), labels)
  np.testing.assert_allclose(float(got), reference_ece(probs, labels), 1e-5)


def test_perfectly_confident_and_right_has_zero_ece():
  logits = jnp.array([[20.0, 0.0], [0.0, 20.0]])
  assert (
    float(metrics.expected_calibration_error(logits, jnp.array([0, 1]))) < 1e-6
  )
  # ... and wrong: ECE = 1
  wrong = metrics.expected_calibration_error(logits, jnp.array([1, 0]))
  np.testing.assert_allclose(float(wrong), 1.0, atol=1e-6)


def test_bin_edges_are_right_closed():
  m = 15
  conf = jnp.array([1 / m, 1 / m + 1e-6, 1.0, 0.0])
  np.testing.assert_array_equal(metrics.bin_index(conf, m), [0, 1, m - 1, 0])


def test_predictive_metrics_batched_stacked_and_padded():
  x, labels = _data(n=203, k=4, seed=1)
  x = x.astype(np.float32)
  ws = np.stack([np.eye(4), 2 * np.eye(4)]).astype(np.float32)  # 2 models
  apply = lambda p, x, sites: x @ p["w"]
  out = metrics.predictive_metrics(
    apply, {"w": ws}, x, labels, batch_size=50, stacked=True
  )
  for i in range(2):
    logits = x @ ws[i]
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1))
    nll = -np.log(probs[np.arange(len(labels)), labels]).mean()
    ent = -(probs * np.log(probs)).sum(1).mean()
    np.testing.assert_allclose(out["loss"][i], nll, rtol=1e-5)
    np.testing.assert_allclose(out["entropy"][i], ent, rtol=1e-5)
    np.testing.assert_allclose(
      out["accuracy"][i], np.mean(probs.argmax(1) == labels), rtol=1e-6
    )
    np.testing.assert_allclose(
      out["ece"][i], reference_ece(probs, labels), atol=1e-5
    )
    assert float(out["bins"]["count"][i].sum()) == len(labels)
  one = metrics.predictive_metrics(apply, {"w": ws[1]}, x, labels)
  np.testing.assert_allclose(one["ece"], out["ece"][1], rtol=1e-6)


def test_bad_bins_are_refused():
  with pytest.raises(ValueError, match="num_bins"):
    metrics.predictive_metrics(
      lambda p, x, s: x, {}, np.zeros((2, 2)), np.zeros(2, int), num_bins=0
    )
