r"""A PyTorch peer: the same MLP and the same analytic regularizers, eager.

This is the explicit + implicit step as the paper's public PyTorch code
computes it (Wei, Kakade & Ma 2020, Algorithm 2): one clean forward pass,
the site gradients of the sampled-label loss and of the true-label loss by
two ``torch.autograd.grad(..., create_graph=True)`` calls, then

.. math::

   R_{exp} = N \sum_{sites} \frac{q}{2(1-q)} \sum (v \odot G)^2,\qquad
   R_{imp} = \sum_{sites} \sqrt{q/(1-q)} \sum A \odot s \odot v,

and ``(L̄ + R_exp + R_imp).backward()`` (double backward) and an Adam step.
The constants are dropjax's Taylor-faithful ones at scale 1, so the values
equal :func:`dropjax.objectives.explicit_implicit`'s for the same weights,
inputs, sampled labels and signs (checked in ``tests/test_benchmarks.py``).

PyTorch is optional (``pip install -e .[bench]``); :func:`available` says
whether it is importable.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

# OpenMP worker threads that spin while waiting make PyTorch several times
# slower on a CPU whose cores are shared with other processes (measured: a
# 2-thread step 6-16x slower than with passive waiting), and their spinning
# steals cycles from the JAX steps timed in between. Passive waiting is the
# fair setting for both; it must be set before the OpenMP runtime starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:  # optional dependency
  import torch
  import torch.nn.functional as F
except ImportError:  # pragma: no cover - exercised where torch is absent
  torch = None
  F = None


def available() -> bool:
  """Whether PyTorch is importable."""
  return torch is not None


def set_threads(n: int | None = None) -> int:
  """Uses ``n`` intra-op threads (default: every CPU core, as XLA does)."""
  n = n or os.cpu_count() or 1
  torch.set_num_threads(n)
  return torch.get_num_threads()


def mlp_weights(params) -> list[tuple[np.ndarray, np.ndarray]]:
  """``[(kernel [in, out], bias [out]), ...]`` in depth order from the params
  of :func:`dropjax.models.make_model` ``("mlp")`` (``hidden_*`` sorted,
  then ``output``)."""
  names = sorted(n for n in params if n != "output") + ["output"]
  return [
    (np.asarray(params[n]["kernel"]), np.asarray(params[n]["bias"]))
    for n in names
  ]


class PeerMLP:
  """``Dense -> ReLU -> site`` hidden layers and a logits layer, in PyTorch.

  Args:
    weights: :func:`mlp_weights` (kernels ``[in, out]``, so ``h @ W + b``).
    dtype: ``torch.float32`` or ``torch.float64``.
  """

  def __init__(
    self, weights: Sequence[tuple[np.ndarray, np.ndarray]], dtype=None
  ):
    dtype = dtype or torch.float32
    self.params = []
    for w, b in weights:
      self.params.append(
        torch.tensor(np.asarray(w), dtype=dtype, requires_grad=True)
      )
      self.params.append(
        torch.tensor(np.asarray(b), dtype=dtype, requires_grad=True)
      )

  def forward(self, x, *, dropout_rates: Sequence[float] | None = None):
    """``(logits, [site activations])``; with ``dropout_rates``, inverted
    dropout at every site (the activations returned are the clean ones)."""
    h = x.reshape(x.shape[0], -1)
    acts = []
    n_layers = len(self.params) // 2
    for i in range(n_layers - 1):
      h = torch.relu(h @ self.params[2 * i] + self.params[2 * i + 1])
      acts.append(h)
      if dropout_rates is not None:
        h = F.dropout(h, dropout_rates[i], training=True)
    logits = h @ self.params[-2] + self.params[-1]
    return logits, acts


def analytic_terms(
  model: PeerMLP,
  x,
  y,
  rates: Sequence[float],
  *,
  y_hat=None,
  signs=None,
  use_explicit: bool = True,
  use_implicit: bool = True,
) -> dict[str, Any]:
  """``L̄``, ``R_exp`` and ``R_imp`` from one clean forward pass.

  Args:
    model: the MLP.
    x: inputs ``[N, d_in]``; y: int labels ``[N]``.
    rates: one drop rate per site.
    y_hat: sampled labels ``[N]``; drawn from the model's softmax (not
      differentiated) when ``None``.
    signs: one ``±1`` tensor per site; drawn when ``None``.
    use_explicit, use_implicit: which terms to build.

  Returns:
    ``{"data", "explicit", "implicit", "total"}`` (0-d tensors in the graph;
    absent terms are 0).
  """
  logits, acts = model.forward(x)
  data = F.cross_entropy(logits, y)
  n = logits.shape[0]
  zero = torch.zeros((), dtype=logits.dtype)
  r_exp = r_imp = zero
  if use_explicit:
    if y_hat is None:
      with torch.no_grad():
        y_hat = torch.multinomial(torch.softmax(logits, -1), 1).squeeze(1)
    sampled = F.cross_entropy(logits, y_hat)
    gs = torch.autograd.grad(sampled, acts, create_graph=True)
    r_exp = sum(
      q / (2 * (1 - q)) * n * torch.sum(torch.square(v * g))
      for v, g, q in zip(acts, gs, rates)
    )
  if use_implicit:
    grads = torch.autograd.grad(data, acts, create_graph=True)
    if signs is None:
      signs = [
        torch.randint(0, 2, v.shape, dtype=v.dtype) * 2 - 1 for v in acts
      ]
    r_imp = sum(
      math.sqrt(q / (1 - q)) * torch.sum(a * s * v)
      for v, a, s, q in zip(acts, grads, signs, rates)
    )
  return {
    "data": data,
    "explicit": r_exp,
    "implicit": r_imp,
    "total": data + r_exp + r_imp,
  }


class PeerTrainer:
  """Eager PyTorch training steps (Adam, lr 1e-3) on one fixed batch.

  Args:
    weights: :func:`mlp_weights`.
    x, y: the batch (numpy or array-likes).
    rates: one drop rate per site.
    seed: ``torch.manual_seed`` for the sampled labels, signs and masks.
  """

  REGIMENS = ("dropout", "explicit", "implicit", "explicit_implicit")

  def __init__(self, weights, x, y, rates: Sequence[float], seed: int = 0):
    torch.manual_seed(seed)
    self.model = PeerMLP(weights)
    self.opt = torch.optim.Adam(self.model.params, lr=1e-3)
    self.x = torch.tensor(np.asarray(x), dtype=torch.float32)
    self.y = torch.tensor(np.asarray(y), dtype=torch.long)
    self.rates = list(rates)

  def step(self, regimen: str) -> float:
    """One training step of ``regimen``; returns the loss."""
    if regimen == "dropout":
      logits, _ = self.model.forward(self.x, dropout_rates=self.rates)
      total = F.cross_entropy(logits, self.y)
    elif regimen in ("explicit", "implicit", "explicit_implicit"):
      total = analytic_terms(
        self.model,
        self.x,
        self.y,
        self.rates,
        use_explicit=regimen != "implicit",
        use_implicit=regimen != "explicit",
      )["total"]
    else:
      raise ValueError(
        f"unknown peer regimen {regimen!r}; valid: {', '.join(self.REGIMENS)}."
      )
    self.opt.zero_grad(set_to_none=True)
    total.backward()
    self.opt.step()
    return float(total.detach())
