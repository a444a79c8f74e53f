"""Training objectives, one per regimen: ``(params, batch, key) -> (loss, aux)``.

Every objective takes a model ``apply(params, x, sites)``, a ``batch = (x, y)``
and a ``jax.random.key``, and returns the scalar to differentiate and an
``aux`` dict with the same keys for every regimen:

* ``data_loss`` -- the batch-mean loss the regimen trains on (with dropout
  noise for the stochastic regimens, clean for the analytic ones);
* ``explicit`` -- ``R_exp`` (0 where absent);
* ``implicit`` -- ``R_imp`` (0 where absent; zero-mean, its gradient is the
  noise);
* ``penalty`` -- L1/L2 penalty (0 where absent);
* ``model_aux`` -- only when ``has_aux=True`` or the model is stateful: the
  model's own aux output (a :class:`dropjax.sites.StateUpdate` for a model
  with BatchNorm).

Which forward pass a stateful model's update (BatchNorm's running
statistics) and ``model_aux`` come from: the one pass of ``none``, ``l1``,
``l2``; the masked pass of ``dropout`` and ``gaussian_dropout`` (as in Flax
and PyTorch, the statistics see the dropped activations); the first mask's
pass of ``dropout_k`` and its fix-noise / implicit variants; the clean pass
(``delta = 0``, no noise) of ``explicit``, ``implicit`` and
``explicit_implicit``; the pass with thinned weights of targeted dropout.

Swapping dropout for its analytic replacement is one line:

>>> import jax, jax.numpy as jnp
>>> def apply(params, x, sites):
...   h = sites("h", jnp.tanh(x @ params["w1"]))
...   return h @ params["w2"]
>>> params = {"w1": jnp.ones((3, 4)) / 3, "w2": jnp.ones((4, 2)) / 4}
>>> batch = (jnp.ones((8, 3)), jnp.zeros((8,), jnp.int32))
>>> obj = dropout(apply, rates=0.5)
>>> obj = explicit_implicit(apply, rates=0.5)
>>> loss, aux = jax.jit(obj)(params, batch, jax.random.key(0))
>>> bool(jnp.isfinite(loss))
True

References: Wei, Kakade & Ma, ICML 2020, arXiv:2002.12915 (DROPOUT_k is
their Algorithm 1, explicit + implicit their Algorithm 2; fix-noise is the
``drop_fix_noise`` update of their code, ``cwein3/dropout-analytical``);
Gomez et al. 2019, arXiv:1905.13678 (targeted dropout).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dropjax import dropout as _dropout
from dropjax import explicit as _explicit
from dropjax import implicit as _implicit
from dropjax import losses as _losses
from dropjax import sites as _sites
from dropjax import tree as _tree

Array = jax.Array
Objective = Callable[[Any, tuple, Array], tuple[Array, dict]]
LeafFilter = Callable[[str, Array], bool]


def _zero():
  return jnp.zeros((), jnp.float32)


def _aux(
  data_loss,
  explicit=None,
  implicit=None,
  penalty=None,
  model_aux=None,
  has_aux=False,
) -> dict:
  dt = jnp.result_type(data_loss)
  z = jnp.zeros((), dt)
  out = {
    "data_loss": data_loss,
    "explicit": z if explicit is None else explicit.astype(dt),
    "implicit": z if implicit is None else implicit.astype(dt),
    "penalty": z if penalty is None else penalty.astype(dt),
  }
  if has_aux or model_aux is not None:
    out["model_aux"] = model_aux
  return out


def _split_batch(batch):
  if isinstance(batch, Mapping):
    return batch["x"], batch["y"]
  x, y = batch
  return x, y


def _resolved_rates(apply, params, x, rates, has_aux):
  names = _sites.site_shapes(apply, params, x, has_aux=has_aux)
  return _sites.resolve_rates(rates, names)


# ----------------------------------------------------------------- none / dropout


def none(
  apply: _sites.Apply,
  *,
  loss: str = "softmax_cross_entropy",
  has_aux: bool = False,
) -> Objective:
  """No regularization: ``L̄(y, apply(params, x))``."""
  _losses.check_loss(loss)

  def objective(params, batch, key):
    del key
    x, y = _split_batch(batch)
    out, maux = _sites.call_apply(
      apply, params, x, _sites.identity_sites, has_aux
    )
    data = _losses.mean_loss(loss, out, y)
    return data, _aux(data, model_aux=maux, has_aux=has_aux)

  return objective


def _check_k(k):
  if not isinstance(k, int) or k < 1:
    raise ValueError(
      f"k (number of dropout samples) must be an int >= 1, got {k!r}."
    )


MASK_AXES = ("vmap", "map")
"""Ways :func:`dropout_family` runs its ``k`` masks (its ``mask_axis``)."""


def _lax_map(fn):
  return lambda xs: jax.lax.map(fn, xs)


def dropout_family(
  apply: _sites.Apply,
  *,
  rates: _sites.Rates,
  k: int = 1,
  fix_noise: bool = False,
  implicit: bool = False,
  implicit_scale=None,
  broadcast_axes: Mapping[str, Sequence[int]] | Sequence[int] | None = None,
  noise: str = "bernoulli",
  loss: str = "softmax_cross_entropy",
  has_aux: bool = False,
  mask_axis: str = "vmap",
) -> Objective:
  r"""DROPOUT_k and its noise-restoring variants (arXiv:2002.12915, Alg. 1).

  The loss is the mean over ``k`` independent dropout masks (``vmap`` or
  ``lax.map``, not a Python loop), so its gradient is ``g_k = (1/k) Σ_r ∇L̄(η_r)``, the update
  direction of Algorithm 1: the same mean as DROPOUT_1, with ``1/k`` of its
  dropout-noise covariance.

  * ``fix_noise``: adds ``sqrt(1 - 1/k) (L̄(η') - L̄(η'')) / √2`` from two more
    masks (``drop_fix_noise`` in the authors' code); its gradient is
    zero-mean with covariance ``(1 - 1/k) Σ_1``, restoring DROPOUT_1's
    covariance ``Σ_1``.
  * ``implicit``: adds ``R_imp`` at the clean point with
    ``implicit_scale = 1 - 1/k`` by default (``drop_standard+taylor_fo``);
    with ``broadcast_axes`` it is the locked form (one sign per group), the
    noise of the locked masks it tops up.

  Args:
    apply: the model.
    rates: one drop rate for all sites or ``{site: q}``.
    k: number of masks per step (>= 1).
    fix_noise: add the fix-noise term.
    implicit: add the implicit regularizer.
    implicit_scale: its covariance scale (default ``1 - 1/k``).
    broadcast_axes: locked dropout: ``{site: axes}``, or one tuple of axes
      for every site (e.g. ``(1,)``: one mask per sequence, shared over
      time), with the meaning of :func:`dropjax.dropout`'s argument.
    noise: ``"bernoulli"`` or ``"gaussian"``.
    loss: loss name.
    has_aux: ``apply`` returns ``(outputs, aux)``; ``model_aux`` comes from
      the first mask.
    mask_axis: how the masks' forward and backward passes run:
      ``"vmap"`` batches them (one pass with every activation ``k`` times
      larger: wider matmuls, ``k`` times the memory) and ``"map"`` runs
      them one after another inside the step (``lax.map``: the memory of
      one mask, no batched matmuls). Same losses and gradients up to float
      rounding; which is faster depends on the model and the backend
      (``docs/benchmarks.md``, "LSTM step cost": ``"map"`` wins for the
      char LSTM on CPU, whose DropConnect sites make ``vmap`` batch
      ``k`` different recurrent weights).

  Returns:
    The objective; ``aux["data_loss"]`` is the mean dropout loss over the
    ``k`` masks, ``aux["implicit"]`` the fix-noise or implicit term.

  Raises:
    ValueError: bad ``k``, rate, loss, noise or ``mask_axis``; ``broadcast_axes`` with
      Gaussian noise; (when called) a model without dropout sites.
    TypeError: ``broadcast_axes`` neither a mapping nor a tuple of ints.
      KeyError (when called): a rate or ``broadcast_axes`` entry for a site
      the model does not have.
  """
  _check_k(k)
  _losses.check_loss(loss)
  if implicit_scale is None:
    implicit_scale = 1.0 - 1.0 / k
  _sites.check_rates(rates)
  _sites.dropout_sites(jax.random.key(0), rates, noise=noise)  # validates noise
  every_site = _sites.check_broadcast_axes(broadcast_axes)
  if noise == "gaussian" and (
    bool(every_site) or any(tuple(a) for a in (broadcast_axes or {}).values())
  ):
    raise ValueError(
      "broadcast_axes (locked masks) are supported for Bernoulli noise only; "
      "Gaussian dropout draws independent noise per element: pass "
      "noise='bernoulli' or drop broadcast_axes."
    )
  if mask_axis not in MASK_AXES:
    raise ValueError(
      f"unknown mask_axis {mask_axis!r}; valid: {', '.join(MASK_AXES)}."
    )
  n_masks = k + (2 if fix_noise else 0)
  over_masks = jax.vmap if mask_axis == "vmap" else _lax_map

  def objective(params, batch, key):
    x, y = _split_batch(batch)
    site_rates = _resolved_rates(apply, params, x, rates, has_aux)
    if not site_rates:
      raise ValueError(
        "the model has no dropout sites (apply never calls sites(name, h)), "
        "so stochastic dropout would train without any dropout; add sites "
        "(with Flax NNX: dropjax.flax.Dropout layers) or use the 'none' "
        "regimen."
      )
    axes = _sites.resolve_broadcast_axes(broadcast_axes, site_rates)
    k_masks, k_imp = jax.random.split(key)

    def one(mask_key):
      sites = _sites.dropout_sites(
        mask_key, site_rates, broadcast_axes=axes, noise=noise
      )
      out, maux = _sites.call_apply(apply, params, x, sites, has_aux)
      return _losses.mean_loss(loss, out, y), maux

    losses, mauxes = over_masks(one)(jax.random.split(k_masks, n_masks))
    data = jnp.mean(losses[:k])
    maux = jax.tree.map(lambda a: a[0], mauxes)  # the first mask's pass
    extra = None
    if fix_noise:
      extra = (
        math.sqrt(1.0 - 1.0 / k) * (losses[k] - losses[k + 1]) / math.sqrt(2.0)
      )
    if implicit:
      lin = _sites.linearize_sites(apply, params, x, has_aux=has_aux)
      r_imp = _implicit.implicit_from_linearization(
        lin,
        site_rates,
        y=y,
        key=k_imp,
        loss=loss,
        scale=implicit_scale,
        broadcast_axes=axes,
      )
      extra = r_imp if extra is None else extra + r_imp
    total = data if extra is None else data + extra
    return total, _aux(data, implicit=extra, model_aux=maux, has_aux=has_aux)

  return objective


def dropout(apply: _sites.Apply, *, rates: _sites.Rates, **kwargs) -> Objective:
  """Stochastic dropout, one fresh mask per step (DROPOUT_1).

  See :func:`dropout_family` for the keyword arguments.
  """
  return dropout_family(apply, rates=rates, k=1, **kwargs)


def gaussian_dropout(
  apply: _sites.Apply, *, rates: _sites.Rates, **kwargs
) -> Objective:
  """Gaussian dropout at the variance of Bernoulli dropout at rate ``q``.

  Multiplicative noise ``1 + sqrt(q/(1-q)) ε``, ``ε ~ N(0, 1)`` (Srivastava
  et al. 2014, JMLR 15, §10): the same mean and variance as inverted
  Bernoulli dropout at rate ``q``, so the explicit and implicit
  regularizers of the two agree to second order (arXiv:2002.12915 §2 uses
  only these two moments). Equal to ``dropout(..., noise="gaussian")``.
  """
  kwargs.setdefault("noise", "gaussian")
  return dropout_family(apply, rates=rates, k=1, **kwargs)


def dropout_k(
  apply: _sites.Apply, *, rates: _sites.Rates, k: int, **kwargs
) -> Objective:
  """DROPOUT_k: ``k`` masks per step, gradients averaged (Algorithm 1)."""
  return dropout_family(apply, rates=rates, k=k, **kwargs)


def dropout_k_fix_noise(
  apply: _sites.Apply, *, rates: _sites.Rates, k: int, **kwargs
) -> Objective:
  """DROPOUT_k + fix-noise: DROPOUT_k's mean, DROPOUT_1's noise."""
  return dropout_family(apply, rates=rates, k=k, fix_noise=True, **kwargs)


def dropout_k_implicit(
  apply: _sites.Apply,
  *,
  rates: _sites.Rates,
  k: int,
  implicit_scale=None,
  **kwargs,
) -> Objective:
  """DROPOUT_k + the implicit regularizer with scale ``1 - 1/k``."""
  return dropout_family(
    apply,
    rates=rates,
    k=k,
    implicit=True,
    implicit_scale=implicit_scale,
    **kwargs,
  )


# ------------------------------------------------------------------ analytic


def analytic(
  apply: _sites.Apply,
  *,
  rates: _sites.Rates,
  use_explicit: bool = True,
  use_implicit: bool = True,
  estimator: str = "sampled_label",
  explicit_scale=1.0,
  implicit_scale=1.0,
  num_samples: int = 1,
  broadcast_axes: _sites.BroadcastAxes = None,
  loss: str = "softmax_cross_entropy",
  has_aux: bool = False,
) -> Objective:
  r"""``L̄ + R_exp + R_imp`` from one clean forward pass (Algorithm 2).

  The data loss, the explicit and the implicit terms share one forward pass;
  the sampled-label and true-label site gradients are two backward passes
  through its residuals (no forward pass is recomputed). The gradient of the
  result is the paper's Algorithm-2 update.

  Args:
    apply: the model.
    rates: one drop rate for all sites or ``{site: q}``.
    use_explicit: include ``R_exp``
      (:func:`dropjax.explicit.explicit_regularizer`).
    use_implicit: include ``R_imp``
      (:func:`dropjax.implicit.implicit_regularizer`).
    estimator: the explicit estimator (:data:`dropjax.explicit.ESTIMATORS`).
    explicit_scale: multiplier on the Taylor-faithful ``R_exp``.
    implicit_scale: covariance multiplier of ``R_imp``.
    num_samples: draws averaged by a stochastic explicit estimator.
    broadcast_axes: locked masks (one tuple of axes for every site, or
      ``{site: axes}``), with :func:`dropjax.dropout`'s meaning: ``R_exp``
      and ``R_imp`` are then those of the shared mask (cross terms inside
      each group, one sign per group). Default: element-wise, as in the
      paper's code.
    loss: loss name.
    has_aux: ``apply`` returns ``(outputs, aux)``.

  Raises:
    ValueError: unknown estimator or loss, bad rate or ``num_samples``.
    TypeError: ``broadcast_axes`` neither a mapping nor a tuple of ints.
    KeyError (when called): a rate or ``broadcast_axes`` entry for a site
      the model does not have.
  """
  _explicit.check_estimator(estimator)
  _explicit.check_num_samples(num_samples)
  _losses.check_loss(loss)
  _sites.check_rates(rates)
  _sites.check_broadcast_axes(broadcast_axes)

  def objective(params, batch, key):
    x, y = _split_batch(batch)
    k_exp, k_imp = jax.random.split(key)
    lin = _sites.linearize_sites(apply, params, x, has_aux=has_aux)
    site_rates = _sites.resolve_rates(rates, lin.activations)
    axes = _sites.resolve_broadcast_axes(broadcast_axes, lin.activations)
    data = _losses.mean_loss(loss, lin.outputs, y)

    # Site gradients for the true labels (implicit, true_label) and the
    # sampled labels (sampled_label): two backward passes through the one
    # forward pass's residuals. (Not one vmapped pass over the stacked
    # cotangents: same FLOPs, but for an MLP XLA then inserted transposes
    # before the second-order weight-gradient matmuls, and for a recurrent
    # model the batched transposed lax.scan ran slower; measured in
    # docs/benchmarks.md.)
    grads = {}
    if use_implicit or (use_explicit and estimator == "true_label"):
      grads["true"] = lin.vjp(_losses.loss_cotangent(loss, lin.outputs, y))
    if use_explicit and estimator == "sampled_label" and num_samples == 1:
      y_hat = _losses.sample_targets(loss, k_exp, lin.outputs)
      grads["sampled"] = lin.vjp(
        _losses.loss_cotangent(loss, lin.outputs, y_hat)
      )

    r_exp = r_imp = None
    if use_explicit:
      sg = {
        "sampled_label": grads.get("sampled"),
        "true_label": grads.get("true"),
      }.get(estimator)
      r_exp = explicit_scale * _explicit.explicit_from_linearization(
        lin,
        site_rates,
        estimator=estimator,
        loss=loss,
        key=k_exp,
        y=y,
        site_grads=sg,
        num_samples=num_samples,
        broadcast_axes=axes,
      )
    if use_implicit:
      r_imp = _implicit.implicit_from_linearization(
        lin,
        site_rates,
        y=y,
        key=k_imp,
        loss=loss,
        scale=implicit_scale,
        site_grads=grads["true"],
        broadcast_axes=axes,
      )
    total = data
    for r in (r_exp, r_imp):
      if r is not None:
        total = total + r
    return total, _aux(
      data, explicit=r_exp, implicit=r_imp, model_aux=lin.aux, has_aux=has_aux
    )

  return objective


def explicit(
  apply: _sites.Apply,
  *,
  rates: _sites.Rates,
  estimator: str = "sampled_label",
  scale=1.0,
  **kwargs,
) -> Objective:
  """``L̄ + R_exp``: the explicit regularizer alone (deterministic apart from
  the sampled labels)."""
  return analytic(
    apply,
    rates=rates,
    use_explicit=True,
    use_implicit=False,
    estimator=estimator,
    explicit_scale=scale,
    **kwargs,
  )


def implicit(
  apply: _sites.Apply, *, rates: _sites.Rates, scale=1.0, **kwargs
) -> Objective:
  """``L̄ + R_imp``: dropout's gradient noise alone, without its bias."""
  return analytic(
    apply,
    rates=rates,
    use_explicit=False,
    use_implicit=True,
    implicit_scale=scale,
    **kwargs,
  )


def explicit_implicit(
  apply: _sites.Apply,
  *,
  rates: _sites.Rates,
  estimator: str = "sampled_label",
  explicit_scale=1.0,
  implicit_scale=1.0,
  **kwargs,
) -> Objective:
  """``L̄ + R_exp + R_imp``: the analytic replacement of dropout (Alg. 2)."""
  return analytic(
    apply,
    rates=rates,
    use_explicit=True,
    use_implicit=True,
    estimator=estimator,
    explicit_scale=explicit_scale,
    implicit_scale=implicit_scale,
    **kwargs,
  )


# ------------------------------------------------------- weight-level regimens


# ``"a/b/0/kernel"`` for a ``tree_flatten_with_path`` key path (the one
# definition is :func:`dropjax.tree.path_string`; this is its old name here).
path_str = _tree.path_string


EMBEDDING_NAMES = ("embedding",)
"""Leaf names of embedding tables: Flax's ``nnx.Embed`` and ``linen.Embed``
store their table as ``embedding``. Such a leaf is not a kernel for the
penalties and targeted dropout (:func:`kernels`); pass your own ``where`` to
include it."""


def is_embedding(path: str) -> bool:
  """Whether the leaf at ``path`` is an embedding table (its last path
  component is in :data:`EMBEDDING_NAMES`, e.g. ``"embed/embedding"``)."""
  return path.rsplit("/", 1)[-1] in EMBEDDING_NAMES


def kernels(path: str, leaf: Array) -> bool:
  """Default leaf filter for penalties: every kernel (rank >= 2) that is not
  an embedding table (:func:`is_embedding`); no biases.

  Embedding tables are left out by choice: they are lookup tables, not
  layers whose weights multiply activations, and Keras' ``kernel_regularizer``
  and Gomez et al.'s targeted dropout do not touch them either.
  """
  return _tree.is_kernel(leaf) and not is_embedding(path)


def _stand_in(leaf, rng):
  """A concrete array shaped like ``leaf``: normal floats, zero integers."""
  shape, dtype = jnp.shape(leaf), jnp.result_type(leaf)
  if jnp.issubdtype(dtype, jnp.floating):
    return jnp.asarray(rng.normal(size=shape), dtype)
  return jnp.zeros(shape, dtype)


def output_kernels(
  apply: _sites.Apply, params, x, *, has_aux: bool = False
) -> tuple[str, ...]:
  """Paths of the kernels that produce the model's outputs (the logits
  layer), found from the model's structure, not from names or order.

  The test: with the cotangent that selects output unit 0 alone
  (``e_0`` at every position), a kernel ``W`` of the output layer
  (``out = h @ W + b``, last axis the ``K`` outputs) gets a gradient only in
  its column 0, while a kernel before it gets one in every column. A kernel
  is an output kernel when its last axis has the outputs' size ``K >= 2``,
  its gradient is zero in columns ``1..K-1`` and nonzero in column 0.

  It runs on stand-ins (standard-normal weights and float inputs of the same
  shapes and dtypes, zero integer inputs), eagerly, so it can be called
  with traced ``params`` and ``x`` inside ``jit`` (it runs once per trace,
  under ``jax.ensure_compile_time_eval``). Embedding tables
  (:func:`is_embedding`) are never output kernels: a decoder tied to the
  embedding has none, and then every other kernel is hidden.

  Args:
    apply: the model ``apply(params, x, sites)``.
    params: its parameters (arrays or tracers).
    x: a batch of inputs (arrays or tracers).
    has_aux: ``apply`` returns ``(outputs, aux)``.

  Returns:
    Path strings (:func:`dropjax.tree.path_string`) in flatten order.

  Example:
    >>> import jax.numpy as jnp
    >>> def apply(p, x, sites):
    ...   h = jnp.tanh(x @ p["fc1"]["kernel"])
    ...   return h @ p["classifier"]["kernel"]
    >>> p = {"fc1": {"kernel": jnp.ones((3, 4))},
    ...      "classifier": {"kernel": jnp.ones((4, 2))}}
    >>> output_kernels(apply, p, jnp.ones((5, 3)))
    ('classifier/kernel',)
  """
  with jax.ensure_compile_time_eval():
    rng = np.random.default_rng(0)
    p0 = jax.tree.map(lambda l: _stand_in(l, rng), params)
    x0 = jax.tree.map(lambda l: _stand_in(l, rng), x)

    def out_fn(p):
      return _sites.call_apply(apply, p, x0, _sites.identity_sites, has_aux)[0]

    out, vjp = jax.vjp(out_fn, p0)
    k = out.shape[-1] if out.ndim else 0
    if k < 2:
      return ()
    ct = jnp.zeros(out.shape, out.dtype).at[..., 0].set(1)
    (grads,) = vjp(ct)
    found = []
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
      ps = path_str(path)
      if not kernels(ps, g) or g.shape[-1] != k:
        continue
      g = np.asarray(g)
      if not np.any(g[..., 1:]) and np.any(g[..., 0]):
        found.append(ps)
  return tuple(found)


def hidden_kernels(
  apply: _sites.Apply, params, x, *, has_aux: bool = False
) -> LeafFilter:
  """Filter selecting every kernel but the output layer's and embeddings.

  Targeted dropout's protocol (Gomez et al. 2019) leaves the logits layer
  alone. The output layer is found from the model's structure
  (:func:`output_kernels`), whatever the layers are named; embedding tables
  are not kernels (:func:`kernels`).

  Args:
    apply, params, x, has_aux: the model, its parameters and a batch of
      inputs (arrays or tracers), as for :func:`output_kernels`.

  Returns:
    A ``(path, leaf) -> bool`` filter.
  """
  out = set(output_kernels(apply, params, x, has_aux=has_aux))
  return lambda path, leaf: kernels(path, leaf) and path not in out


def select_kernels(
  *, exclude=(), include_embeddings: bool = False
) -> LeafFilter:
  """A filter of kernels chosen by path, for ``where=`` of the penalties and
  targeted dropout.

  Args:
    exclude: path strings (e.g. ``("classifier/kernel",)``) or path prefixes
      ending in ``/`` (e.g. ``("classifier/",)``) to leave out.
    include_embeddings: also select embedding tables.

  Returns:
    A ``(path, leaf) -> bool`` filter.
  """
  exclude = tuple(exclude)

  def where(path, leaf):
    chosen = (
      _tree.is_kernel(leaf) if include_embeddings else kernels(path, leaf)
    )
    return chosen and not any(
      path == e or (e.endswith("/") and path.startswith(e)) for e in exclude
    )

  return where


def map_selected(fn: Callable[[Array, int], Array], params, where: LeafFilter):
  """Applies ``fn(leaf, index)`` to the selected leaves, keeps the others."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  out, i = [], 0
  for path, leaf in flat:
    if where(path_str(path), leaf):
      out.append(fn(leaf, i))
      i += 1
    else:
      out.append(leaf)
  return jax.tree_util.tree_unflatten(treedef, out)


def _selected(params, where):
  return [
    leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    if where(path_str(path), leaf)
  ]


def l1_penalty(params, *, where: LeafFilter = kernels) -> Array:
  """``Σ |w|`` over the selected leaves (kernels by default)."""
  return sum(
    (jnp.sum(jnp.abs(w)) for w in _selected(params, where)), jnp.zeros(())
  )


def l2_penalty(params, *, where: LeafFilter = kernels) -> Array:
  """``Σ w²`` over the selected leaves (kernels by default)."""
  return sum(
    (jnp.sum(jnp.square(w)) for w in _selected(params, where)), jnp.zeros(())
  )


def _penalised(apply, penalty_fn, coef, where, loss, has_aux):
  _losses.check_loss(loss)
  if not coef >= 0:
    raise ValueError(f"penalty coefficient must be >= 0, got {coef!r}.")

  def objective(params, batch, key):
    del key
    x, y = _split_batch(batch)
    out, maux = _sites.call_apply(
      apply, params, x, _sites.identity_sites, has_aux
    )
    data = _losses.mean_loss(loss, out, y)
    pen = coef * penalty_fn(params, where=where)
    return data + pen, _aux(data, penalty=pen, model_aux=maux, has_aux=has_aux)

  return objective


def l1(
  apply: _sites.Apply,
  *,
  coef: float,
  where: LeafFilter = kernels,
  loss: str = "softmax_cross_entropy",
  has_aux: bool = False,
) -> Objective:
  """``L̄ + coef Σ|w|`` (Keras ``l1`` kernel regularizer convention, as in
  Filan et al. 2021 with ``coef = 5e-5``). No dropout."""
  return _penalised(apply, l1_penalty, coef, where, loss, has_aux)


def l2(
  apply: _sites.Apply,
  *,
  coef: float,
  where: LeafFilter = kernels,
  loss: str = "softmax_cross_entropy",
  has_aux: bool = False,
) -> Objective:
  """``L̄ + coef Σ w²`` (Keras ``l2`` convention: no 1/2). No dropout."""
  return _penalised(apply, l2_penalty, coef, where, loss, has_aux)


def _targeted(apply, drop_fn, gamma, alpha, where, loss, has_aux):
  _losses.check_loss(loss)
  for v, name in ((gamma, "gamma"), (alpha, "alpha")):
    _dropout._check_fraction(v, name)

  def objective(params, batch, key):
    x, y = _split_batch(batch)
    sel = (
      where
      if where is not None
      else hidden_kernels(apply, params, x, has_aux=has_aux)
    )
    thinned = map_selected(
      lambda w, i: drop_fn(
        jax.random.fold_in(key, i), w, gamma=gamma, alpha=alpha
      ),
      params,
      sel,
    )
    out, maux = _sites.call_apply(
      apply, thinned, x, _sites.identity_sites, has_aux
    )
    data = _losses.mean_loss(loss, out, y)
    return data, _aux(data, model_aux=maux, has_aux=has_aux)

  return objective


def targeted_weight(
  apply: _sites.Apply,
  *,
  gamma,
  alpha,
  where: LeafFilter | None = None,
  loss: str = "softmax_cross_entropy",
  has_aux: bool = False,
) -> Objective:
  """Targeted weight dropout on the selected kernels (Gomez et al. 2019).

  Each step thins every selected kernel with
  :func:`dropjax.targeted_weight_dropout` (one mask per kernel per step,
  shared by the batch, no rescaling) and trains on the thinned network.
  ``where`` defaults to every kernel but the output layer's, found from the
  model's structure (:func:`hidden_kernels`), and no embedding table; pass
  a filter (e.g. :func:`select_kernels`) to choose yourself.
  """
  return _targeted(
    apply, _dropout.targeted_weight_dropout, gamma, alpha, where, loss, has_aux
  )


def targeted_unit(
  apply: _sites.Apply,
  *,
  gamma,
  alpha,
  where: LeafFilter | None = None,
  loss: str = "softmax_cross_entropy",
  has_aux: bool = False,
) -> Objective:
  """Targeted unit dropout on the selected kernels (Gomez et al. 2019).

  ``where`` as in :func:`targeted_weight`.
  """
  return _targeted(
    apply, _dropout.targeted_unit_dropout, gamma, alpha, where, loss, has_aux
  )


# ------------------------------------------------------------------ registry

REGIMENS: dict[str, Callable[..., Objective]] = {
  "none": none,
  "dropout": dropout,
  "gaussian_dropout": gaussian_dropout,
  "dropout_k": dropout_k,
  "dropout_k_fix_noise": dropout_k_fix_noise,
  "dropout_k_implicit": dropout_k_implicit,
  "explicit": explicit,
  "implicit": implicit,
  "explicit_implicit": explicit_implicit,
  "targeted_weight": targeted_weight,
  "targeted_unit": targeted_unit,
  "l1": l1,
  "l2": l2,
}


def make_objective(regimen: str, apply: _sites.Apply, **kwargs) -> Objective:
  """The objective of a regimen by name (for configs).

  Args:
    regimen: one of :data:`REGIMENS`.
    apply: the model.
    **kwargs: the regimen's keyword arguments.

  Raises:
    ValueError: unknown regimen (the message lists the valid ones).
  """
  if regimen not in REGIMENS:
    raise ValueError(
      f"unknown regimen {regimen!r}; valid: {', '.join(REGIMENS)}."
    )
  return REGIMENS[regimen](apply, **kwargs)


# ------------------------------------------------------- configs -> objectives

# Per regimen: (keyword argument, config keys read in order, required).
_DROPOUT_FAMILY = (
  "dropout",
  "gaussian_dropout",
  "dropout_k",
  "dropout_k_fix_noise",
  "dropout_k_implicit",
)
_ANALYTIC = ("explicit", "implicit", "explicit_implicit")
_RATE_REGIMENS = _DROPOUT_FAMILY + _ANALYTIC
_CONFIG_KEYS: dict[str, tuple[tuple[str, tuple[str, ...], bool], ...]] = {
  "none": (),
  "dropout": (("noise", ("noise",), False),),
  "gaussian_dropout": (),
  "dropout_k": (("k", ("k",), True), ("noise", ("noise",), False)),
  "dropout_k_fix_noise": (("k", ("k",), True), ("noise", ("noise",), False)),
  "dropout_k_implicit": (
    ("k", ("k",), True),
    ("implicit_scale", ("dropout_k_implicit_scale",), False),
    ("noise", ("noise",), False),
  ),
  "explicit": (
    ("estimator", ("estimator",), False),
    ("scale", ("explicit_scale",), False),
    ("num_samples", ("num_samples",), False),
  ),
  "implicit": (("scale", ("implicit_scale",), False),),
  "explicit_implicit": (
    ("estimator", ("estimator",), False),
    ("explicit_scale", ("explicit_scale",), False),
    ("implicit_scale", ("implicit_scale",), False),
    ("num_samples", ("num_samples",), False),
  ),
  "targeted_weight": (("gamma", ("gamma",), True), ("alpha", ("alpha",), True)),
  "targeted_unit": (("gamma", ("gamma",), True), ("alpha", ("alpha",), True)),
  "l1": (("coef", ("l1", "coef"), True),),
  "l2": (("coef", ("l2", "coef"), True),),
}


def _config_value(config, key):
  if config is None:
    return None
  try:
    return config[key] if key in config else None
  except (KeyError, TypeError):
    return None


def from_config(
  regimen: str,
  apply: _sites.Apply,
  config=None,
  *,
  rates: _sites.Rates | None = None,
  broadcast_axes: Mapping[str, Sequence[int]] | None = None,
  lock_analytic: bool = False,
  has_aux: bool = False,
  **overrides,
) -> Objective:
  """The objective of a regimen, its options read from a flat config.

  One mapping from the experiments' config vocabulary to each regimen's
  keyword arguments, so that no experiment writes its own:

  ========================  ============================================
  regimen                   config keys read (``*``: required)
  ========================  ============================================
  none                      --
  dropout                   ``noise``
  gaussian_dropout          --
  dropout_k, ..._fix_noise  ``k*``, ``noise``
  dropout_k_implicit        ``k*``, ``dropout_k_implicit_scale`` (``None``:
                            ``1 - 1/k``), ``noise``
  explicit                  ``estimator``, ``explicit_scale``,
                            ``num_samples``
  implicit                  ``implicit_scale``
  explicit_implicit         ``estimator``, ``explicit_scale``,
                            ``implicit_scale``, ``num_samples``
  targeted_weight / _unit   ``gamma*``, ``alpha*``
  l1 / l2                   ``l1*`` / ``l2*`` (or ``coef``)
  ========================  ============================================

  plus ``loss`` for every regimen. Keys the regimen does not read are
  ignored (a config holds many other settings); a key that is absent or
  ``None`` leaves the regimen's default.

  Args:
    regimen: one of :data:`REGIMENS`.
    apply: the model.
    config: a mapping or ``ml_collections.ConfigDict`` (or ``None``).
    rates: drop rates ``q`` (a float or ``{site: q}``), needed by the
      dropout-like and analytic regimens.
    broadcast_axes: ``{site: axes}`` shared-mask axes (locked dropout),
      passed to the dropout family, and to the analytic regimens when
      ``lock_analytic``.
    lock_analytic: the analytic regimens' regularizers treat the
      ``broadcast_axes`` sites as locked (otherwise element-wise, as the
      paper's code does).
    has_aux: see :func:`none`.
    **overrides: values that take precedence over the config, by config
      key (e.g. ``k=8`` when the regimen name carries ``k``).

  Returns:
    ``objective(params, batch, key) -> (loss, aux)``.

  Raises:
    ValueError: an unknown regimen (the valid ones are listed), a required
      key missing (named), or ``rates`` missing for a regimen that needs
      them.

  Example:

  >>> apply = lambda p, x, sites: sites("h", x @ p["w"])
  >>> obj = from_config("explicit_implicit", apply,
  ...                   {"explicit_scale": 0.5, "learning_rate": 1e-3},
  ...                   rates=0.5)
  >>> from_config("l1", apply, {"l2": 1e-4})
  Traceback (most recent call last):
  ...
  ValueError: regimen 'l1' needs the config key 'l1' (or 'coef').
  """
  if regimen not in REGIMENS:
    raise ValueError(
      f"unknown regimen {regimen!r}; valid: {', '.join(REGIMENS)}."
    )
  kwargs: dict[str, Any] = {"has_aux": has_aux}
  if regimen in _RATE_REGIMENS:
    if rates is None:
      raise ValueError(f"regimen {regimen!r} needs drop rates (rates=).")
    kwargs["rates"] = rates
  if broadcast_axes is not None and (
    regimen in _DROPOUT_FAMILY or (lock_analytic and regimen in _ANALYTIC)
  ):
    kwargs["broadcast_axes"] = broadcast_axes

  def lookup(key):
    if key in overrides:
      return overrides[key]
    return _config_value(config, key)

  for kwarg, keys, required in _CONFIG_KEYS[regimen] + (
    ("loss", ("loss",), False),
  ):
    value = next((v for v in map(lookup, keys) if v is not None), None)
    if value is None:
      if required:
        alt = "".join(f" (or {k!r})" for k in keys[1:])
        raise ValueError(
          f"regimen {regimen!r} needs the config key {keys[0]!r}{alt}."
        )
      continue
    kwargs[kwarg] = value
  return REGIMENS[regimen](apply, **kwargs)
