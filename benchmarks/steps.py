"""The benchmarked models, regimens and training steps.

A *step* is what a training loop runs once per minibatch: the gradient of
the regimen's objective (``jax.value_and_grad``) and an Adam update
(``optax.adam``), jitted as one function
``step(params, opt_state, batch, key) -> (params, opt_state, loss)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from benchmarks import timing
from dropjax import models as _models
from dropjax import objectives as _objectives

REGIMENS = (
  "none",
  "dropout",
  "dropout_k1",
  "dropout_k4",
  "dropout_k8",
  "explicit",
  "implicit",
  "explicit_implicit",
)
"""Regimens of the main table. ``dropout`` is DROPOUT_1, the reference of every
ratio; ``dropout_k1`` is the same objective built and compiled separately, so
its ratio to ``dropout`` (ideally 1) shows the measurement noise."""

REFERENCE = "dropout"

MAP_SUFFIX = "_map"
"""``dropout_k8_map``: DROPOUT_8 with its masks run one after another
(``mask_axis="map"``) instead of batched (``vmap``)."""


@dataclasses.dataclass
class Model:
  """A model in functional form with one benchmark batch.

  Attributes:
    name: label used in the results (e.g. ``mlp-784-1024-1024-10``).
    apply: ``apply(params, x, sites)``.
    params: parameter pytree.
    rates: ``{site: q}``.
    broadcast_axes: ``{site: axes}`` of locked sites (stochastic dropout).
    batch: ``(x, y)``.
    has_aux: ``apply`` returns ``(outputs, aux)``.
    config: the model's size parameters (for the results file).
  """

  name: str
  apply: Callable
  params: Any
  rates: dict
  broadcast_axes: dict
  batch: tuple
  has_aux: bool
  config: dict


def mlp(
  *,
  width: int = 1024,
  depth: int = 2,
  batch: int = 128,
  d_in: int = 784,
  n_out: int = 10,
  rate: float = 0.5,
  seed: int = 0,
) -> Model:
  """The Flax NNX MLP of :mod:`dropjax.models` with a random batch.

  ``d_in - width x depth - n_out``, ``Dense -> ReLU -> site`` per hidden
  layer (``depth`` dropout sites, rate ``rate``), Glorot-uniform kernels.
  """
  sizes = (d_in,) + (width,) * depth + (n_out,)
  apply, params, rates = _models.make_model(
    "mlp", key=seed, layer_sizes=sizes, dropout_rate=rate
  )
  kx, ky = jax.random.split(jax.random.key(seed + 1))
  x = jax.random.normal(kx, (batch, d_in), jnp.float32)
  y = jax.random.randint(ky, (batch,), 0, n_out)
  return Model(
    "mlp-" + "-".join(map(str, sizes)),
    apply,
    params,
    rates,
    {},
    (x, y),
    False,
    {"layer_sizes": list(sizes), "batch": batch, "rate": rate},
  )


def char_lstm(
  *,
  vocab: int = 96,
  embed_dim: int = 64,
  hidden: int = 256,
  layers: int = 2,
  batch: int = 32,
  seq_len: int = 64,
  seed: int = 0,
  unroll: int | bool = 1,
) -> Model | None:
  """The character-level LSTM of ``dropjax.models.lstm``, or ``None`` where
  that module does not exist.

  AWD-LSTM sites (locked ``emb``/``h{i}``/``out``, DropConnect ``w_hh{i}``)
  at the model's default rates; one BPTT chunk of random tokens, zero carry.
  ``unroll``: time steps per iteration of each layer's scan.
  """
  try:
    from dropjax.models import lstm as _lstm
  except ImportError:
    return None
  apply, params, spec, model = _lstm.make_lm(
    vocab,
    key=seed,
    embed_dim=embed_dim,
    hidden_size=hidden,
    num_layers=layers,
    unroll=unroll,
  )
  kx, ky = jax.random.split(jax.random.key(seed + 1))
  tokens = jax.random.randint(kx, (batch, seq_len), 0, vocab)
  targets = jax.random.randint(ky, (batch, seq_len), 0, vocab)
  carry = model.initial_carry(batch)
  name = f"char-lstm-V{vocab}-E{embed_dim}-H{hidden}x{layers}"
  return Model(
    name,
    apply,
    params,
    dict(spec.rates),
    dict(spec.broadcast_axes),
    ((tokens, carry), targets),
    True,
    {
      "vocab": vocab,
      "embed_dim": embed_dim,
      "hidden": hidden,
      "layers": layers,
      "batch": batch,
      "seq_len": seq_len,
      "unroll": unroll,
      "rates": dict(spec.rates),
    },
  )


def transformer(
  *,
  vocab: int = 96,
  embed_dim: int = 128,
  heads: int = 4,
  layers: int = 2,
  batch: int = 32,
  seq_len: int = 64,
  rate: float = 0.1,
  seed: int = 0,
) -> Model:
  """The decoder-only Transformer of ``dropjax.models.transformer`` (feed-
  forward ``4 E``, tied embedding, learned positions; sites at the
  embedding, attention probabilities, attention and feed-forward outputs,
  feed-forward hidden layer and final hidden state, all at ``rate``) with
  one batch of random tokens."""
  from dropjax.models import transformer as _tf

  rates = {f"dropout_{k}": rate for k in _tf.SITE_KINDS}
  apply, params, spec, _ = _tf.make_lm(
    vocab,
    key=seed,
    embed_dim=embed_dim,
    num_heads=heads,
    num_layers=layers,
    max_len=seq_len,
    **rates,
  )
  kx, ky = jax.random.split(jax.random.key(seed + 1))
  tokens = jax.random.randint(kx, (batch, seq_len), 0, vocab)
  targets = jax.random.randint(ky, (batch, seq_len), 0, vocab)
  return Model(
    f"transformer-V{vocab}-E{embed_dim}x{layers}-heads{heads}",
    apply,
    params,
    dict(spec.rates),
    {},
    (tokens, targets),
    False,
    {
      "vocab": vocab,
      "embed_dim": embed_dim,
      "heads": heads,
      "layers": layers,
      "batch": batch,
      "seq_len": seq_len,
      "rate": rate,
    },
  )


def objective(regimen: str, model: Model):
  """The dropjax objective of ``regimen`` for ``model``."""
  kw = dict(has_aux=model.has_aux)
  if regimen == "none":
    return _objectives.none(model.apply, **kw)
  if regimen == "dropout" or regimen.startswith("dropout_k"):
    name, mapped = _split_map(regimen)
    k = 1 if name == "dropout" else int(name[len("dropout_k") :])
    return _objectives.dropout_k(
      model.apply,
      rates=model.rates,
      k=k,
      broadcast_axes=model.broadcast_axes or None,
      mask_axis="map" if mapped else "vmap",
      **kw,
    )
  if regimen == "explicit":
    return _objectives.explicit(model.apply, rates=model.rates, **kw)
  if regimen == "implicit":
    return _objectives.implicit(model.apply, rates=model.rates, **kw)
  if regimen == "explicit_implicit":
    return _objectives.explicit_implicit(model.apply, rates=model.rates, **kw)
  raise ValueError(
    f"unknown benchmark regimen {regimen!r}; valid: {', '.join(REGIMENS)}."
  )


def unrolled(model: Model) -> Model | None:
  """The same char LSTM (weights, batch) with every scan unrolled, for
  :func:`flops_executed`; ``None`` for a model without scans."""
  c = model.config
  if "unroll" not in c:
    return None
  keys = ("vocab", "embed_dim", "hidden", "layers", "batch", "seq_len")
  return char_lstm(**{k: c[k] for k in keys}, unroll=True)


def flops_executed(
  regimen: str, model: Model, opt, *, full: Model | None = None
) -> float | None:
  """The FLOPs one step of ``regimen`` executes, scans counted per step.

  For a model with scans, XLA's count of the unoptimised HLO of the same
  step with every scan unrolled (:func:`benchmarks.timing.lowered_flops`);
  a ``_map`` regimen is counted as its ``vmap`` twin (the same math, whose
  masks are not a loop). ``None`` for models without scans (there the
  compiled step's count is right). ``full``: ``unrolled(model)``, built
  once by callers that count several regimens of one model.
  """
  full = unrolled(model) if full is None else full
  if full is None:
    return None
  step = jax.jit(make_step(objective(_split_map(regimen)[0], full), opt))
  return timing.lowered_flops(step, *step_args(full, opt))


def _split_map(regimen: str) -> tuple[str, bool]:
  """``("dropout_k8", True)`` for ``"dropout_k8_map"``."""
  if regimen.endswith(MAP_SUFFIX):
    return regimen[: -len(MAP_SUFFIX)], True
  return regimen, False


def optimizer() -> optax.GradientTransformation:
  """Adam, learning rate 1e-3."""
  return optax.adam(1e-3)


def make_step(obj, opt: optax.GradientTransformation):
  """``step(params, opt_state, batch, key) -> (params, opt_state, loss)``."""

  def step(params, opt_state, batch, key):
    (loss, _), grads = jax.value_and_grad(obj, has_aux=True)(params, batch, key)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def step_args(model: Model, opt: optax.GradientTransformation, seed: int = 0):
  """``(params, opt_state, batch, key)`` for one call of a step."""
  return (
    model.params,
    opt.init(model.params),
    model.batch,
    jax.random.key(seed + 2),
  )


def analytic_terms(
  apply, params, x, y, *, rates, y_hat, signs, has_aux: bool = False
) -> dict[str, Any]:
  """dropjax's ``L̄``, ``R_exp`` and ``R_imp`` with given sampled labels and
  signs (the deterministic parts of :func:`dropjax.objectives.analytic`).

  ``R_exp`` with sampled labels ``y_hat`` is the ``true_label`` estimator
  evaluated at ``y_hat`` (the sampled labels are constants); ``R_imp`` takes
  ``signs`` (``{site: ±1 array}``). Used to check the PyTorch peer.
  """
  from dropjax import explicit as _explicit
  from dropjax import implicit as _implicit
  from dropjax import losses as _losses
  from dropjax import sites as _sites

  lin = _sites.linearize_sites(apply, params, x, has_aux=has_aux)
  site_rates = _sites.resolve_rates(rates, lin.activations)
  data = _losses.mean_loss("softmax_cross_entropy", lin.outputs, y)
  r_exp = _explicit.explicit_from_linearization(
    lin, site_rates, estimator="true_label", y=y_hat
  )
  r_imp = _implicit.implicit_from_linearization(
    lin, site_rates, y=y, key=None, signs=signs
  )
  return {
    "data": data,
    "explicit": r_exp,
    "implicit": r_imp,
    "total": data + r_exp + r_imp,
  }
