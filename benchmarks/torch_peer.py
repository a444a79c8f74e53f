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


# ------------------------------------------- torch.func and torch.compile


def _cross_entropy_grad(logits, labels):
  """``d mean CE / d logits``: ``(softmax - onehot) / N`` (no graph)."""
  p = torch.softmax(logits, -1)
  return (p - F.one_hot(labels, logits.shape[-1]).to(p.dtype)) / logits.shape[0]


def functional_loss(
  params, x, y, rates, regimen, *, masks=None, gumbel=None, signs=None
):
  """One regimen's objective as a pure function of ``params`` (a list of
  tensors ``[W0, b0, W1, b1, ...]``), for ``torch.func.grad``.

  The randomness comes in as tensors, drawn outside (so that the function
  can be traced by ``torch.compile``): ``masks`` (inverted-dropout masks,
  one per site) for ``dropout``; ``gumbel`` (``[N, K]`` Gumbel noise: the
  sampled label is ``argmax(logits + gumbel)``, a draw from the softmax)
  and ``signs`` (``±1`` per site) for the analytic regimens. The site
  gradients come from one ``torch.func.vjp`` of the logits with respect to
  zero perturbations added at the sites, so no ``create_graph`` is needed;
  the constants are :func:`analytic_terms`'.
  """
  n_layers = len(params) // 2
  h0 = x.reshape(x.shape[0], -1)

  def forward(deltas):
    h, acts = h0, []
    for i in range(n_layers - 1):
      h = torch.relu(h @ params[2 * i] + params[2 * i + 1]) + deltas[i]
      acts.append(h)
      if masks is not None:
        h = h * masks[i]
    return h @ params[-2] + params[-1], acts

  if regimen in ("none", "dropout"):
    logits, _ = forward([0.0] * (n_layers - 1))
    return F.cross_entropy(logits, y)
  widths = [params[2 * i].shape[1] for i in range(n_layers - 1)]
  zeros = [x.new_zeros((x.shape[0], w)) for w in widths]
  (logits, acts), vjp = torch.func.vjp(forward, zeros)
  data = F.cross_entropy(logits, y)
  n = logits.shape[0]
  zero_acts = [torch.zeros_like(a) for a in acts]
  total = data
  if regimen in ("explicit", "explicit_implicit"):
    y_hat = torch.argmax(logits.detach() + gumbel, -1)
    (g,) = vjp((_cross_entropy_grad(logits, y_hat), zero_acts))
    total = total + sum(
      q / (2 * (1 - q)) * n * torch.sum(torch.square(v * gi))
      for v, gi, q in zip(acts, g, rates)
    )
  if regimen in ("implicit", "explicit_implicit"):
    (a,) = vjp((_cross_entropy_grad(logits, y), zero_acts))
    total = total + sum(
      math.sqrt(q / (1 - q)) * torch.sum(ai * s * v)
      for v, ai, s, q in zip(acts, a, signs, rates)
    )
  return total


def _adam(params, grads, m, v, t, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
  """optax.adam's update, functional: ``(params, m, v)`` after step ``t``
  (1-based, a float tensor)."""
  m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads)]
  v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads)]
  c1, c2 = 1 - b1**t, 1 - b2**t
  params = [
    p - lr * (mi / c1) / (torch.sqrt(vi / c2) + eps)
    for p, mi, vi in zip(params, m, v)
  ]
  return params, m, v


def functional_step(params, m, v, t, loss_fn, regimen, noise):
  """One Adam step of ``regimen`` with ``torch.func.grad``; pure.

  ``loss_fn(params, regimen, noise)`` is the objective (its batch bound).
  """
  grads, loss = torch.func.grad_and_value(lambda p: loss_fn(p, regimen, noise))(
    params
  )
  params, m, v = _adam(params, grads, m, v, t)
  return params, m, v, loss


class FunctionalTrainer:
  """A PyTorch peer written with ``torch.func`` (``grad`` and ``vjp``, no
  double backward), eager or ``torch.compile``-d (inductor, the default
  mode): the strongest PyTorch version of the step a user would write.
  Build it with :func:`mlp_trainer` or :func:`lstm_trainer`.

  Args:
    params: a list of float32 tensors.
    loss_fn: ``loss_fn(params, regimen, noise) -> 0-d tensor``.
    noise_fn: ``noise_fn(regimen, generator) -> dict`` of the step's random
      tensors (drawn outside the compiled function).
    regimens: the regimens ``loss_fn`` knows.
    compile: wrap the step in ``torch.compile`` (one compiled graph per
      regimen; the first call of each compiles).
  """

  def __init__(
    self, params, loss_fn, noise_fn, regimens, *, seed=0, compile=False
  ):
    self.gen = torch.Generator().manual_seed(seed)
    self.params = list(params)
    self.m = [torch.zeros_like(p) for p in self.params]
    self.v = [torch.zeros_like(p) for p in self.params]
    self.t = 0
    self.loss_fn = loss_fn
    self.noise_fn = noise_fn
    self.REGIMENS = tuple(regimens)
    self._step = (
      torch.compile(functional_step, dynamic=False)
      if compile
      else functional_step
    )

  def step(self, regimen: str) -> float:
    """One training step of ``regimen``; returns the loss."""
    if regimen not in self.REGIMENS:
      raise ValueError(
        f"unknown peer regimen {regimen!r}; valid: {', '.join(self.REGIMENS)}."
      )
    self.t += 1
    with torch.no_grad():
      self.params, self.m, self.v, loss = self._step(
        self.params,
        self.m,
        self.v,
        torch.tensor(float(self.t)),
        self.loss_fn,
        regimen,
        self.noise_fn(regimen, self.gen),
      )
    return float(loss)


MLP_REGIMENS = ("none", "dropout", "explicit", "implicit", "explicit_implicit")


def mlp_trainer(weights, x, y, rates, *, seed=0, compile=False):
  """:class:`FunctionalTrainer` of the MLP (:func:`functional_loss`)."""
  params = [
    torch.tensor(np.asarray(a), dtype=torch.float32)
    for w, b in weights
    for a in (w, b)
  ]
  x = torch.tensor(np.asarray(x), dtype=torch.float32)
  y = torch.tensor(np.asarray(y), dtype=torch.long)
  rates = list(rates)
  widths = [w.shape[1] for w, _ in weights[:-1]]
  n, n_out = x.shape[0], weights[-1][0].shape[1]

  def loss_fn(p, regimen, noise):
    return functional_loss(p, x, y, rates, regimen, **noise)

  def noise_fn(regimen, g):
    if regimen == "dropout":
      return {
        "masks": [
          torch.bernoulli(torch.full((n, w), 1 - q), generator=g) / (1 - q)
          for w, q in zip(widths, rates)
        ]
      }
    if regimen == "none":
      return {}
    u = torch.rand((n, n_out), generator=g).clamp_min(1e-20)
    return {
      "gumbel": -torch.log(-torch.log(u)),
      "signs": [
        torch.randint(0, 2, (n, w), generator=g).float() * 2 - 1 for w in widths
      ],
    }

  return FunctionalTrainer(
    params, loss_fn, noise_fn, MLP_REGIMENS, seed=seed, compile=compile
  )


# ------------------------------------------------------------- the LSTM

LSTM_REGIMENS = ("none", "dropout")
"""The LSTM peer's regimens: the analytic ones would need the site
gradients of every locked and DropConnect site through the recurrence,
which this peer does not write out."""


def lstm_params(params, num_layers: int) -> list:
  """``[embedding, (w_ih, w_hh, bias) per layer, kernel, bias]`` (numpy) from
  the parameters of ``dropjax.models.lstm.make_lm`` (untied)."""
  out = [np.asarray(params["embed"]["embedding"])]
  for i in range(num_layers):
    layer = params[f"lstm_{i}"]
    out += [np.asarray(layer[k]) for k in ("w_ih", "w_hh", "bias")]
  out += [
    np.asarray(params["decoder"]["kernel"]),
    np.asarray(params["decoder"]["bias"]),
  ]
  return out


def lstm_loss(params, tokens, targets, num_layers: int, *, masks=None):
  """Mean next-token cross-entropy of the character LSTM of
  ``dropjax.models.lstm`` (zero initial state, untied decoder), the same
  arithmetic: the input projection of all steps as one matmul, then a loop
  over time of ``h @ w_hh`` and the gates (input, forget, cell, output).

  ``masks`` (inverted dropout, for ``dropout``): ``{"emb", "h{i}", "out"}``
  locked masks ``[B, 1, F]`` and ``"w_hh{i}"`` DropConnect masks
  ``[H, 4H]``.
  """
  emb = params[0]
  h = emb[tokens]  # [B, T, E]
  if masks is not None:
    h = h * masks["emb"]
  b, t_len = tokens.shape
  for i in range(num_layers):
    w_ih, w_hh, bias = params[1 + 3 * i : 4 + 3 * i]
    if masks is not None:
      w_hh = w_hh * masks[f"w_hh{i}"]
    xw = h @ w_ih + bias  # [B, T, 4H]
    hid = w_hh.shape[0]
    h_t = xw.new_zeros((b, hid))
    c_t = xw.new_zeros((b, hid))
    outs = []
    for step in range(t_len):
      z = xw[:, step] + h_t @ w_hh
      gi, gf, gg, go = z.chunk(4, dim=-1)
      c_t = torch.sigmoid(gf) * c_t + torch.sigmoid(gi) * torch.tanh(gg)
      h_t = torch.sigmoid(go) * torch.tanh(c_t)
      outs.append(h_t)
    h = torch.stack(outs, 1)
    if masks is not None:
      h = h * masks["out" if i == num_layers - 1 else f"h{i}"]
  logits = h @ params[-2] + params[-1]
  return F.cross_entropy(
    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
  )


def lstm_trainer(
  params, tokens, targets, rates, num_layers, *, seed=0, compile=False
):
  """:class:`FunctionalTrainer` of the character LSTM (:func:`lstm_loss`)
  for ``none`` and ``dropout`` (rates ``{site: q}`` as the model's
  ``site_spec``)."""
  flat = [
    torch.tensor(a, dtype=torch.float32)
    for a in lstm_params(params, num_layers)
  ]
  tokens = torch.tensor(np.asarray(tokens), dtype=torch.long)
  targets = torch.tensor(np.asarray(targets), dtype=torch.long)
  b = tokens.shape[0]
  feat = {"emb": flat[0].shape[1]}
  for i in range(num_layers):
    hid = flat[2 + 3 * i].shape[0]
    feat["out" if i == num_layers - 1 else f"h{i}"] = hid

  def loss_fn(p, regimen, noise):
    return lstm_loss(p, tokens, targets, num_layers, **noise)

  def noise_fn(regimen, g):
    if regimen == "none":
      return {}
    masks = {}
    for name, f in feat.items():
      q = rates[name]
      masks[name] = torch.bernoulli(
        torch.full((b, 1, f), 1 - q), generator=g
      ) / (1 - q)
    for i in range(num_layers):
      q = rates[f"w_hh{i}"]
      shape = tuple(flat[2 + 3 * i].shape)
      masks[f"w_hh{i}"] = torch.bernoulli(
        torch.full(shape, 1 - q), generator=g
      ) / (1 - q)
    return {"masks": masks}

  return FunctionalTrainer(
    flat, loss_fn, noise_fn, LSTM_REGIMENS, seed=seed, compile=compile
  )
