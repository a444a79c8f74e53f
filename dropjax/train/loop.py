"""The training loop: scan chunks, vmapped seeds, sharding, checkpoints."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from dropjax import losses as _losses
from dropjax import sites as _sites
from dropjax.train import evaluation as _evaluation
from dropjax.train import files as _files
from dropjax.train.step import Batch, Objective, TrainState, init_state
from dropjax.train.step import make_train_step

Array = jax.Array

INIT_TAG, DATA_TAG, STEP_TAG = 0, 1, 2
"""``fold_in`` tags deriving the init, data-order and step keys from a seed."""

DATA_AXIS = "data"
"""Name of the mesh axis the batch is sharded over."""

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
FAILURE_FILE = "failure.json"
CHECKPOINT_DIR = "checkpoints"


# ----------------------------------------------------------------- results


class NonFiniteLossError(FloatingPointError):
  """A run's loss (or gradient) became NaN or infinite.

  Attributes:
    run_name: the run (e.g. the regimen).
    failures: ``{seed: step}``: for each seed that failed in the chunk where
      the first failure happened, the first step whose loss or gradient norm
      was not finite (``step`` = number of updates done before it).
    metrics: ``{seed: {metric: value}}`` at that step.
    history: the evaluation records written before the failure.
  """

  def __init__(self, run_name: str, failures: dict[int, int],
               metrics: dict[int, dict], history: list[dict]):
    self.run_name = run_name
    self.failures = dict(failures)
    self.metrics = metrics
    self.history = history
    parts = []
    for s, t in sorted(self.failures.items()):
      vals = ", ".join(f"{k}={v:.4g}" for k, v in metrics[s].items()
                       if k in ("loss", "data_loss", "grad_norm"))
      parts.append(f"seed {s} at step {t} ({vals})")
    super().__init__(
        f"run {run_name!r}: non-finite loss or gradient: {'; '.join(parts)}. "
        "Training stopped; the metrics and checkpoints written before this "
        "chunk are kept.")


@dataclasses.dataclass
class TrainResult:
  """What :func:`train` returns.

  Attributes:
    state: the final :class:`TrainState`, every leaf with a leading seed
      axis ``[S, ...]`` (replicated over the mesh).
    history: the evaluation records (the lines of ``metrics.jsonl``).
    seeds: the seeds, in the order of the leading axis.
    run_dir: where files were written (``None`` if nowhere).
    resumed_from: the step training resumed from (0 for a fresh run).
    train_seconds: wall time of the training chunks, over all sessions of
      the run (evaluation and checkpoints excluded; compilation included).
  """
  state: TrainState
  history: list[dict]
  seeds: tuple[int, ...]
  run_dir: str | None
  resumed_from: int
  train_seconds: float


# ----------------------------------------------------------- mesh and keys


def make_mesh(devices: Sequence[Any] | int | None = None) -> Mesh:
  """A 1-D mesh with the axis ``"data"`` over ``devices``.

  Args:
    devices: ``None`` (all devices: ``jax.devices()``, every host's once
      ``jax.distributed.initialize()`` has run), a number ``k`` (the first
      ``k``), or a list of devices.

  Raises:
    ValueError: for an empty device list or more devices than exist.
  """
  if devices is None:
    devices = jax.devices()
  elif isinstance(devices, int):
    if not 1 <= devices <= jax.device_count():
      raise ValueError(f"asked for {devices} devices; "
                       f"{jax.device_count()} exist.")
    devices = jax.devices()[:devices]
  devices = list(devices)
  if not devices:
    raise ValueError("need at least one device.")
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def _check_seeds(seeds) -> tuple[int, ...]:
  seeds = tuple(int(s) for s in seeds)
  if not seeds:
    raise ValueError("need at least one seed.")
  if len(set(seeds)) != len(seeds) or min(seeds) < 0 or max(seeds) >= 2**32:
    raise ValueError(f"seeds must be distinct ints in [0, 2**32), got {seeds}.")
  return seeds


def seed_keys(seeds: Sequence[int]) -> Array:
  """Typed keys ``[S]``: ``jax.random.key(s)`` for each seed."""
  seeds = _check_seeds(seeds)
  return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))


def _put(x, sharding: NamedSharding) -> Array:
  """A global array from a host array that every process holds in full."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


# ---------------------------------------------------- jitted, cached pieces


def _cached(fn):
  """``lru_cache`` that does not cache calls with unhashable arguments."""
  cached = functools.lru_cache(maxsize=32)(fn)

  @functools.wraps(fn)
  def wrapper(*args):
    try:
      hash(args)
    except TypeError:
      return fn(*args)
    return cached(*args)

  wrapper.cache_clear = cached.cache_clear
  return wrapper


def _epoch_perms(data_keys, epoch, n_train):
  """``[S, n]`` int32: each seed's permutation of ``epoch``."""
  return jax.vmap(lambda dk: jax.random.permutation(
      jax.random.fold_in(dk, epoch), n_train).astype(jnp.int32))(data_keys)


def _data_keys(keys):
  return jax.vmap(lambda k: jax.random.fold_in(k, DATA_TAG))(keys)


@_cached
def _jitted_perms(n_train, mesh):
  """``(keys [S], epoch) -> [S, n]``: the epoch's permutations, replicated."""
  return jax.jit(lambda keys, e: _epoch_perms(_data_keys(keys), e, n_train),
                 out_shardings=NamedSharding(mesh, P()))


@_cached
def _jitted_chunk(objective, optimizer, n_train, batch_size, preprocess, mesh,
                  n_steps):
  """``chunk(states, perms, keys, x, y, start) -> (states, perms, metrics)``.

  ``states``: the seeds' stacked :class:`TrainState`; ``perms``: ``[S, n]``,
  the permutations of epoch ``start // steps_per_epoch`` (ignored when
  ``start`` begins an epoch); ``keys``: ``[S]`` seed keys; ``x, y``: the
  whole training set; ``start``: int32, the global step of the chunk's first
  update. Runs ``n_steps`` updates in one ``lax.scan``, drawing a new epoch's
  permutations (one sort per seed and epoch) when a step begins an epoch;
  returns the permutations of the last step's epoch for the next chunk.
  ``metrics`` leaves are ``[n_steps, S]``. ``states`` and ``perms`` are
  donated.
  """
  step_fn = make_train_step(objective, optimizer)
  steps_per_epoch = n_train // batch_size
  batch_sharding = NamedSharding(mesh, P(None, DATA_AXIS))

  def chunk(states, perms, keys, x, y, start):
    data_keys = _data_keys(keys)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, STEP_TAG))(keys)
    n_seeds = keys.shape[0]

    def body(carry, t):
      states, perms = carry
      pos = (t % steps_per_epoch) * batch_size
      perms = jax.lax.cond(
          pos == 0,
          lambda: _epoch_perms(data_keys, t // steps_per_epoch, n_train),
          lambda: perms)
      idx = jax.lax.dynamic_slice(perms, (0, pos), (n_seeds, batch_size))
      idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
      xb, yb = x[idx], y[idx]  # [S, B, ...], batch axis sharded
      if preprocess is not None:
        xb, yb = jax.vmap(preprocess)(xb, yb)
      ks = jax.vmap(lambda k: jax.random.fold_in(k, t))(step_keys)
      states, metrics = jax.vmap(step_fn)(states, (xb, yb), ks)
      return (states, perms), metrics

    ts = start + jnp.arange(n_steps, dtype=jnp.int32)
    (states, perms), metrics = jax.lax.scan(body, (states, perms), ts)
    return states, perms, metrics

  return jax.jit(chunk, donate_argnums=(0, 1),
                 out_shardings=NamedSharding(mesh, P()))


@_cached
def _jitted_keys(mesh):
  """``uint32 seeds [S] -> typed keys [S]``, replicated over ``mesh``."""
  return jax.jit(jax.vmap(jax.random.key),
                 out_shardings=NamedSharding(mesh, P()))


@_cached
def _jitted_init_params(init_params, mesh):
  def init(keys):
    return jax.vmap(
        lambda k: init_params(jax.random.fold_in(k, INIT_TAG)))(keys)

  return jax.jit(init, out_shardings=NamedSharding(mesh, P()))


@_cached
def _jitted_init_state(optimizer, mesh):
  return jax.jit(jax.vmap(lambda p: init_state(p, optimizer)),
                 out_shardings=NamedSharding(mesh, P()))


@_cached
def _jitted_eval(apply, loss, preprocess, mesh):
  return jax.jit(_evaluation.stacked_eval_fn(apply, loss, preprocess),
                 static_argnums=4, out_shardings=NamedSharding(mesh, P()))


def clear_compile_cache() -> None:
  """Forgets the jitted chunk / init / evaluation functions :func:`train`
  keeps (keyed on the objective, optimizer, model and mesh objects)."""
  for f in (_jitted_chunk, _jitted_perms, _jitted_keys, _jitted_init_params,
            _jitted_init_state, _jitted_eval):
    f.cache_clear()


def init_seeds(init_params: Callable[[Array], Any], seeds: Sequence[int]):
  """The initial parameters :func:`train` gives ``seeds``, stacked ``[S, ...]``.

  Seed ``s`` gets ``init_params(fold_in(jax.random.key(s), INIT_TAG))``.
  Compute them once and pass them as ``train(init_params=...)`` to every
  regimen: the regimens then start from the same weights per seed and the
  initialisation is compiled once.
  """
  return _jitted_init_params(init_params, make_mesh(1))(seed_keys(seeds))


def _check_stacked(params, n_seeds):
  leaves = jax.tree.leaves(params)
  if not leaves or any(np.ndim(l) < 1 or np.shape(l)[0] != n_seeds
                       for l in leaves):
    raise ValueError(
        "init_params must be a callable init(key) -> params or a pytree "
        f"whose leaves all have a leading seed axis of size {n_seeds}.")
  return params


# ------------------------------------------------------------- checkpoints


class _Checkpoints:
  """orbax ``CheckpointManager``: ``{"state": TrainState, "meta": dict}``."""

  def __init__(self, directory: str, keep: int, async_save: bool):
    import orbax.checkpoint as ocp  # only needed with a run directory
    self._ocp = ocp
    self._mgr = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save,
            create=True))

  def latest(self) -> int | None:
    return self._mgr.latest_step()

  def meta(self, step: int) -> dict:
    args = self._ocp.args.Composite(meta=self._ocp.args.JsonRestore())
    return self._mgr.restore(step, args=args)["meta"]

  def state(self, step: int, abstract):
    args = self._ocp.args.Composite(
        state=self._ocp.args.StandardRestore(abstract))
    return self._mgr.restore(step, args=args)["state"]

  def save(self, step: int, state, meta: dict) -> None:
    args = self._ocp.args.Composite(state=self._ocp.args.StandardSave(state),
                                    meta=self._ocp.args.JsonSave(meta))
    self._mgr.save(step, args=args, force=True)

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()


class _Means:
  """Per-seed running sums of the step metrics since the last record."""

  def __init__(self, sums=None, count=0):
    self.sums = {k: np.asarray(v, np.float64) for k, v in (sums or {}).items()}
    self.count = int(count)

  def add(self, metrics: dict) -> None:
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + np.sum(
          np.asarray(v, np.float64), axis=0)
    self.count += int(np.shape(metrics["loss"])[0])

  def pop(self) -> dict:
    if not self.count:
      return {}
    out = {k: (v / self.count).tolist() for k, v in self.sums.items()}
    self.sums, self.count = {}, 0
    return out

  def to_json(self) -> dict:
    return {"sums": {k: v.tolist() for k, v in self.sums.items()},
            "count": self.count}


def _nan_check(metrics: dict, start: int, seeds, run_name, history):
  bad = ~(np.isfinite(metrics["loss"]) & np.isfinite(metrics["grad_norm"]))
  if not bad.any():
    return
  failures, at = {}, {}
  for j, s in enumerate(seeds):
    if bad[:, j].any():
      i = int(np.argmax(bad[:, j]))
      failures[s] = start + i
      at[s] = {k: float(v[i, j]) for k, v in metrics.items()}
  raise NonFiniteLossError(run_name, failures, at, list(history))


# -------------------------------------------------------------------- train


def train(apply: _sites.Apply, objective: Objective,
          optimizer: optax.GradientTransformation,
          init_params: Callable[[Array], Any] | Any, train_data: Batch, *,
          steps: int, batch_size: int = 128, seeds: Sequence[int] = (0,),
          chunk_size: int = 100,
          eval_data: Mapping[str, Batch] | None = None,
          eval_every: int = 1, eval_at_start: bool = False,
          eval_batch_size: int = 1000, loss: str = "softmax_cross_entropy",
          preprocess: Callable[[Any, Any], Batch] | None = None,
          run_dir: str | None = None, run_name: str = "run",
          checkpoint_every: int = 1, keep_checkpoints: int = 2,
          async_checkpoints: bool = True, resume: bool = True,
          devices: Sequence[Any] | int | None = None,
          progress: bool = True,
          callback: Callable[[dict], None] | None = None) -> TrainResult:
  """Trains ``S`` seeds of one model under one objective.

  The loop runs ``ceil(steps / chunk_size)`` chunks; each chunk is one call of
  a jitted ``lax.scan`` over ``chunk_size`` steps (the last one may be
  shorter, which costs one more compilation: make ``steps`` a multiple of
  ``chunk_size`` to compile once). Between chunks, on the host: the NaN check,
  evaluation every ``eval_every`` chunks (and after the last), a line in
  ``metrics.jsonl``, a checkpoint every ``checkpoint_every`` chunks (and
  after the last), ``callback``, and the progress bar.

  Seeds are a ``vmap`` axis: the parameters of seed ``s`` are
  ``init_params(fold_in(jax.random.key(s), INIT_TAG))`` (computed under
  ``vmap``, so ``init_params`` must accept a traced typed key, as
  :func:`dropjax.models.make_init` does; or computed once by
  :func:`init_seeds` and passed in), and every state leaf carries a leading
  ``[S]`` axis. The data order of seed ``s`` in epoch ``e`` is
  ``permutation(fold_in(fold_in(key(s), DATA_TAG), e), n)`` (consecutive
  slices of ``batch_size``; the ``n % batch_size`` left-over examples of each
  permutation are skipped) and the objective's key at step ``t`` is
  ``fold_in(fold_in(key(s), STEP_TAG), t)``: every number depends only on
  ``(seed, step)``, so resumption is exact and a seed trained alone or with
  others sees the same data and noise.

  The data set lives on device, replicated on every device of the mesh; the
  batch axis (of every step and of evaluation) is sharded over the mesh axis
  ``"data"``; parameters and optimizer state are replicated. With one device
  this is plain single-device training.

  The jitted chunk, initialisation and evaluation functions are cached on
  the (objective, optimizer, model, mesh, sizes) objects, so another run with
  the same objects in the same process does not recompile
  (:func:`clear_compile_cache` forgets them).

  Args:
    apply: the model ``apply(params, x, sites)`` (used for evaluation).
    objective: ``(params, batch, key) -> (loss, aux)`` for ``apply``.
    optimizer: an optax transformation (:func:`make_optimizer`).
    init_params: ``init(key) -> params`` for one seed (vmapped over the
      seeds' init keys), or parameters already stacked over the seeds
      (``[S, ...]`` leaves, e.g. from :func:`init_seeds`; they are copied,
      never donated).
    train_data: ``(x, y)`` host arrays with ``n`` examples on the leading
      axis (e.g. ``x`` uint8 ``[n, 28, 28, 1]`` with a ``preprocess`` that
      scales it, or float32).
    steps: total number of updates (counting those of a resumed run).
    batch_size: examples per step, divisible by the number of devices and
      at most ``n``.
    seeds: the seeds trained at once (distinct ints in ``[0, 2**32)``).
    chunk_size: steps per jit call.
    eval_data: ``{name: (x, y)}`` sets evaluated without dropout (e.g.
      ``{"val": ..., "test": ...}``); ``None`` or empty: no evaluation.
    eval_every: evaluate (and write a JSONL line) every this many chunks;
      the last chunk always gets one.
    eval_at_start: also write a record at step 0 (before training).
    eval_batch_size: examples per evaluation forward pass (bounds memory);
      divisible by the number of devices.
    loss: the loss evaluation reports (:data:`dropjax.losses.LOSSES`).
    preprocess: ``(x, y) -> (x, y)`` applied inside jit to each training
      and evaluation batch (one seed's batch), e.g. uint8 to float32.
    run_dir: directory for ``metrics.jsonl``, ``summary.json``,
      ``failure.json`` and ``checkpoints/``; ``None`` writes nothing and
      cannot resume.
    run_name: names the run in records, progress bar and errors (e.g. the
      regimen).
    checkpoint_every: save a checkpoint every this many chunks (0: only
      after the last chunk); needs ``run_dir``.
    keep_checkpoints: how many recent checkpoints orbax keeps.
    async_checkpoints: let orbax write checkpoints in a background thread
      (the arrays are copied to host before training continues).
    resume: continue from the latest checkpoint in ``run_dir`` if there is
      one (records after it are dropped from ``metrics.jsonl`` and redone).
      ``False`` starts afresh (overwriting ``metrics.jsonl``).
    devices: the devices of the mesh (see :func:`make_mesh`).
    progress: show a tqdm bar (process 0 only; needs ``tqdm``).
    callback: ``callback(info)`` after each chunk's bookkeeping, with
      ``info = {"step", "chunk", "train": {metric: [[S]] per step},
      "record": dict or None, "state": TrainState}`` (the state is donated
      to the next chunk: copy what you keep). An exception raised there
      propagates (after pending checkpoint writes finish), e.g. to stop a
      run early.

  Returns:
    A :class:`TrainResult`.

  Raises:
    NonFiniteLossError: when a seed's loss or gradient norm is NaN/inf. It
      names ``run_name``, the seed(s) and the first bad step. Metrics and
      checkpoints written before the failing chunk stay; ``failure.json`` is
      written to ``run_dir``. Catch it per run.
    ValueError: inconsistent sizes (batch vs data or devices, steps < 1,
      ...), or a checkpoint in ``run_dir`` made with other seeds, batch
      size, data size or run name, or beyond ``steps``.
  """
  seeds = _check_seeds(seeds)
  _losses.check_loss(loss)
  x_train, y_train = train_data
  n_train = int(np.shape(x_train)[0])
  if int(np.shape(y_train)[0]) != n_train:
    raise ValueError(f"train x has {n_train} examples, y has "
                     f"{np.shape(y_train)[0]}.")
  if steps < 1 or chunk_size < 1 or eval_every < 1 or checkpoint_every < 0:
    raise ValueError("steps, chunk_size and eval_every must be >= 1 and "
                     "checkpoint_every >= 0.")
  if not 1 <= batch_size <= n_train:
    raise ValueError(f"batch_size {batch_size} must be in [1, n={n_train}].")
  mesh = make_mesh(devices)
  n_dev = mesh.devices.size
  if batch_size % n_dev or (eval_data and eval_batch_size % n_dev):
    raise ValueError(f"batch_size ({batch_size}) and eval_batch_size "
                     f"({eval_batch_size}) must be divisible by the number of "
                     f"devices ({n_dev}).")
  steps_per_epoch = n_train // batch_size
  is_main = jax.process_index() == 0
  replicated = NamedSharding(mesh, P())

  # Data on device: the training set replicated; evaluation sets as
  # [batches, batch, ...] with the batch axis sharded.
  x_dev, y_dev = _put(x_train, replicated), _put(y_train, replicated)
  eval_sets = {}
  for name, (ex, ey) in (eval_data or {}).items():
    xb, yb, mask, n = _evaluation.batch_eval_arrays(ex, ey, eval_batch_size)
    sh = NamedSharding(mesh, P(None, DATA_AXIS))
    eval_sets[name] = (_put(xb, sh), _put(yb, sh), _put(mask, sh), n)
  eval_fn = _jitted_eval(apply, loss, preprocess, mesh)

  keys = _jitted_keys(mesh)(np.asarray(seeds, np.uint32))
  if callable(init_params):
    params0 = _jitted_init_params(init_params, mesh)(keys)
  else:  # a fresh replicated copy: the caller's arrays are never donated
    params0 = jax.tree.map(
        lambda a: (jax.device_put(a, replicated, may_alias=False)
                   if isinstance(a, jax.Array) else _put(a, replicated)),
        _check_stacked(init_params, len(seeds)))
  init_all = _jitted_init_state(optimizer, mesh)

  metrics_path = None
  if run_dir is not None:
    run_dir = os.fspath(run_dir)
    if is_main:
      os.makedirs(run_dir, exist_ok=True)
    metrics_path = os.path.join(run_dir, METRICS_FILE)
  ckpt = None
  if run_dir is not None and (checkpoint_every or resume):
    ckpt = _Checkpoints(os.path.join(run_dir, CHECKPOINT_DIR),
                        keep_checkpoints, async_checkpoints)
  meta_fixed = {"run_name": run_name, "seeds": list(seeds),
                "batch_size": batch_size, "n_train": n_train}

  bar = None
  try:
    # ----------------------------------------------------- start or resume
    state, start, means, seconds_before = None, 0, _Means(), 0.0
    latest = ckpt.latest() if (ckpt is not None and resume) else None
    if latest is not None:
      meta = ckpt.meta(latest)
      for k, v in meta_fixed.items():
        if meta.get(k) != v:
          raise ValueError(
              f"checkpoint in {run_dir} has {k}={meta.get(k)!r}, this run "
              f"has {v!r}; use another run_dir or resume=False.")
      if int(meta["step"]) > steps:
        raise ValueError(f"checkpoint in {run_dir} is at step "
                         f"{meta['step']}, beyond steps={steps}.")
      abstract = jax.tree.map(
          lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                         sharding=replicated),
          jax.eval_shape(init_all, params0))
      state = ckpt.state(latest, abstract)
      start = int(meta["step"])
      means = _Means(meta["means"]["sums"], meta["means"]["count"])
      seconds_before = float(meta["train_seconds"])
    else:
      state = init_all(params0)
    del params0
    resumed_from = start
    history = []
    if metrics_path is not None:
      # Records after the checkpoint we resume from (all of them for a
      # fresh run) are dropped; they are redone identically.
      history = [r for r in _files.read_jsonl(metrics_path)
                 if r.get("step", 0) <= start] if latest is not None else []
      if is_main:
        _files.write_jsonl_atomic(metrics_path, history)
        if os.path.exists(os.path.join(run_dir, FAILURE_FILE)):
          os.unlink(os.path.join(run_dir, FAILURE_FILE))

    def record(step, train_means, seconds, params) -> dict:
      ev = {name: {k: np.asarray(v).tolist()
                   for k, v in eval_fn(params, xb, yb, m, n).items()}
            for name, (xb, yb, m, n) in eval_sets.items()}
      rec = {"run": run_name, "step": int(step),
             "epoch": step / steps_per_epoch, "seeds": list(seeds),
             "train_seconds": seconds, "train": train_means, "eval": ev}
      history.append(rec)
      if metrics_path is not None and is_main:
        _files.append_jsonl(metrics_path, rec)
      return rec

    if progress and is_main:
      try:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, desc=run_name, unit="step",
                   dynamic_ncols=True)
      except ImportError:
        bar = None

    # ------------------------------------------------------------- chunks
    if start == 0 and eval_at_start and eval_sets:
      record(0, {}, 0.0, state.params)
    t_train = 0.0
    chunk_idx = start // chunk_size
    perms = None
    while start < steps:
      n = min(chunk_size, steps - start)
      fn = _jitted_chunk(objective, optimizer, n_train, batch_size,
                         preprocess, mesh, n)
      t0 = time.perf_counter()
      if perms is None:  # this epoch's data order (first chunk, or resumed)
        perms = _jitted_perms(n_train, mesh)(
            keys, jnp.int32(start // steps_per_epoch))
      state, perms, metrics = fn(state, perms, keys, x_dev, y_dev,
                                 jnp.int32(start))
      metrics = jax.device_get(metrics)  # waits for the chunk
      t_train += time.perf_counter() - t0
      _nan_check(metrics, start, seeds, run_name, history)
      start += n
      chunk_idx += 1
      means.add(metrics)
      last = start >= steps
      seconds = seconds_before + t_train
      rec = None
      if last or chunk_idx % eval_every == 0:
        rec = record(start, means.pop(), seconds, state.params)
      if ckpt is not None and (
          last or (checkpoint_every and chunk_idx % checkpoint_every == 0)):
        ckpt.save(start, state, dict(meta_fixed, step=start, steps=steps,
                                     means=means.to_json(),
                                     train_seconds=seconds))
      if bar is not None:
        post = {"loss": f"{float(np.mean(metrics['loss'])):.4f}"}
        for name, ev in (rec["eval"] if rec else {}).items():
          post[f"{name}_acc"] = f"{float(np.mean(ev['accuracy'])):.4f}"
          break
        bar.set_postfix(post, refresh=False)
        bar.update(n)
      if callback is not None:
        callback({"step": start, "chunk": chunk_idx,
                  "train": {k: v.tolist() for k, v in metrics.items()},
                  "record": rec, "state": state})
  except NonFiniteLossError as err:
    if run_dir is not None and is_main:
      _files.write_json_atomic(os.path.join(run_dir, FAILURE_FILE), {
          "run": run_name, "seeds": list(seeds),
          "failures": {str(s): t for s, t in err.failures.items()},
          "metrics": {str(s): m for s, m in err.metrics.items()},
          "message": str(err)})
    raise
  finally:
    if bar is not None:
      bar.close()
    if ckpt is not None:
      ckpt.close()

  total_seconds = seconds_before + t_train
  if run_dir is not None and is_main:
    _files.write_json_atomic(os.path.join(run_dir, SUMMARY_FILE), {
        "run": run_name, "seeds": list(seeds), "steps": steps,
        "batch_size": batch_size, "n_train": n_train, "devices": n_dev,
        "train_seconds": total_seconds,
        "final": history[-1] if history else None})
  return TrainResult(state=state, history=history, seeds=seeds,
                     run_dir=run_dir, resumed_from=resumed_from,
                     train_seconds=total_seconds)
