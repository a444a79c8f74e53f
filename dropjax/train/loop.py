"""The training engine: scan chunks, vmapped seeds, sharding, checkpoints."""

from __future__ import annotations

import dataclasses
import os
import sys
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
from dropjax.train import sources as _sources
from dropjax.train import writers as _writers
from dropjax.train.cache import cached as _cached
from dropjax.train.cache import clear as clear_compile_cache
from dropjax.train.checkpoint import Checkpoints
from dropjax.train.sources import DATA_AXIS
from dropjax.train.step import Batch, Objective, TrainState, init_state
from dropjax.train.step import make_train_step_with_aux

Array = jax.Array
Hook = Callable[[TrainState, Array], TrainState]

INIT_TAG, DATA_TAG, STEP_TAG = 0, 1, 2
"""``fold_in`` tags deriving the init, data-order and step keys from a seed."""

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
FAILURE_FILE = "failures.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"

CHECKPOINT_FORMAT = 2
"""Version of the checkpoint layout; a checkpoint of another is refused."""

NAN_POLICIES = ("raise", "drop_seed")
"""``on_nan`` choices of :func:`train`."""

SEED_AXES = ("auto", "vmap", "map")
"""``seed_axis`` choices of :func:`train` (see :func:`resolve_seed_axis`)."""

DEFAULT_SEED_AXIS = {"cpu": "vmap", "gpu": "vmap", "cuda": "vmap"}
"""The seed axis ``"auto"`` picks per backend (platform name); backends not
listed get ``"vmap"``. Measured with ``python -m benchmarks.seed_axis``
(``docs/benchmarks.md``): on the 2-core CPU, inside the engine's scanned
chunks, ``vmap`` took 0.77-0.99x the time of separate single-seed programs
and ``lax.map`` 1.07-1.36x (the main job's MLP and the 1024-wide one, S = 2
and 5); on an H200, ``vmap`` took 0.22-0.53x and ``lax.map`` 1.19-1.32x."""

__all__ = [
  "Best",
  "CHECKPOINT_DIR",
  "DATA_AXIS",
  "DATA_TAG",
  "FAILURE_FILE",
  "INIT_TAG",
  "METRICS_FILE",
  "NAN_POLICIES",
  "NonFiniteLossError",
  "SEED_AXES",
  "STEP_TAG",
  "SUMMARY_FILE",
  "TENSORBOARD_DIR",
  "TrainResult",
  "clear_compile_cache",
  "data_keys",
  "init_seeds",
  "make_mesh",
  "resolve_seed_axis",
  "seed_keys",
  "train",
]


# ----------------------------------------------------------------- results


class NonFiniteLossError(FloatingPointError):
  """A run's loss (or gradient) became NaN or infinite (``on_nan="raise"``).

  Attributes:
    run_name: the run (e.g. the regimen).
    failures: ``{seed: step}``: for each seed that failed in the chunk where
      the first failure happened, the first step whose loss or gradient norm
      was not finite (``step`` = number of updates done before it).
    metrics: ``{seed: {metric: value}}`` at that step.
    history: the evaluation records written before the failure.
  """

  def __init__(
    self,
    run_name: str,
    failures: dict[int, int],
    metrics: dict[int, dict],
    history: list[dict],
  ):
    self.run_name = run_name
    self.failures = dict(failures)
    self.metrics = metrics
    self.history = history
    parts = [
      f"seed {s} at step {t} ({_fmt_metrics(metrics[s])})"
      for s, t in sorted(self.failures.items())
    ]
    super().__init__(
      f"run {run_name!r}: non-finite loss or gradient: {'; '.join(parts)}. "
      "Training stopped; the metrics and checkpoints written before this "
      "chunk are kept."
    )


def _fmt_metrics(m: dict) -> str:
  return ", ".join(
    f"{k}={v:.4g}"
    for k, v in m.items()
    if k in ("loss", "data_loss", "grad_norm")
  )


@dataclasses.dataclass(frozen=True)
class Best:
  """Which evaluation selects a run's best parameters (``keep_best``).

  Attributes:
    split: the evaluation set's name (a key of the evaluation records).
    metric: the metric in that set (e.g. ``"loss"``, ``"accuracy"``).
    mode: ``"min"`` or ``"max"``; ``None`` picks ``"max"`` for accuracy and
      ``"min"`` otherwise.
  """

  split: str
  metric: str = "loss"
  mode: str | None = None

  @property
  def maximise(self) -> bool:
    mode = self.mode or ("max" if "accuracy" in self.metric else "min")
    if mode not in ("min", "max"):
      raise ValueError(f"Best.mode must be 'min' or 'max', got {mode!r}.")
    return mode == "max"


@dataclasses.dataclass
class TrainResult:
  """What :func:`train` returns.

  Attributes:
    state: the final :class:`TrainState`, every leaf with a leading seed
      axis ``[S, ...]`` (replicated over the mesh). Failed seeds' entries
      (``on_nan="drop_seed"``) are garbage.
    history: the evaluation records (the lines of ``metrics.jsonl``).
    seeds: the seeds, in the order of the leading axis.
    run_dir: where files were written (``None`` if nowhere).
    resumed_from: the step training resumed from (0 for a fresh run).
    train_seconds: wall time of the training chunks, over all sessions of
      the run (evaluation and checkpoints excluded; compilation included).
    failures: ``{seed: {"step", "metrics", "message"}}`` for seeds stopped
      by a non-finite loss or gradient (``on_nan="drop_seed"``).
    best_params: with ``keep_best``: per seed (leading axis), the
      parameters at that seed's best evaluation (strictly better than every
      earlier one; the initial parameters if none was finite); else ``None``.
    best_step: with ``keep_best``: ``{seed: step}`` of ``best_params``.
    best_value: with ``keep_best``: ``{seed: value}`` of the selecting
      metric at ``best_step`` (``None`` if never finite).
  """

  state: TrainState
  history: list[dict]
  seeds: tuple[int, ...]
  run_dir: str | None
  resumed_from: int
  train_seconds: float
  failures: dict = dataclasses.field(default_factory=dict)
  best_params: Any = None
  best_step: dict | None = None
  best_value: dict | None = None


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
      raise ValueError(
        f"asked for {devices} devices; {jax.device_count()} exist."
      )
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


def data_keys(keys: Array) -> Array:
  """``[S]`` data-order keys ``fold_in(key(s), DATA_TAG)`` of seed keys."""
  return jax.vmap(lambda k: jax.random.fold_in(k, DATA_TAG))(keys)


# --------------------------------------------------------------- seed axis


def resolve_seed_axis(seed_axis: str = "auto", platform: str | None = None):
  """The seed axis :func:`train` uses: ``"vmap"`` or ``"map"``.

  Args:
    seed_axis: ``"vmap"`` (the seeds' steps batched into one step by
      ``jax.vmap``), ``"map"`` (one seed's step after another inside the
      same jitted chunk, ``jax.lax.map``) or ``"auto"`` (the backend's
      default in :data:`DEFAULT_SEED_AXIS`).
    platform: the backend whose default ``"auto"`` takes (default:
      ``jax.default_backend()``).

  Raises:
    ValueError: an unknown ``seed_axis``.
  """
  if seed_axis not in SEED_AXES:
    raise ValueError(
      f"unknown seed_axis {seed_axis!r}; valid: {', '.join(SEED_AXES)}."
    )
  if seed_axis != "auto":
    return seed_axis
  return DEFAULT_SEED_AXIS.get(platform or jax.default_backend(), "vmap")


def per_seed(fn: Callable, in_axes: tuple, seed_axis: str) -> Callable:
  """``fn`` applied to every seed: ``jax.vmap(fn, in_axes)`` or its
  sequential equivalent ``jax.lax.map``.

  ``in_axes`` is as for ``jax.vmap`` but only ``0`` (the seed axis leads)
  or ``None`` (shared by every seed), per argument or as a prefix tree of
  it. Outputs get a leading seed axis either way. With ``"map"``, each
  seed runs the unbatched ``fn``, so its numbers are those of a run with
  that seed alone.
  """
  if seed_axis == "vmap":
    return jax.vmap(fn, in_axes=in_axes)
  if seed_axis != "map":
    raise ValueError(f"seed_axis must be 'vmap' or 'map', got {seed_axis!r}.")

  def mapped(*args):
    flags = jax.tree.map(
      lambda ax, sub: jax.tree.map(lambda _: ax is not None, sub),
      tuple(in_axes),
      args,
      is_leaf=lambda x: x is None,
    )
    leaves, tree = jax.tree.flatten(args)
    is_mapped = jax.tree.leaves(flags)
    xs = [a for a, m in zip(leaves, is_mapped) if m]

    def one(xs_i):
      it = iter(xs_i)
      full = [next(it) if m else a for a, m in zip(leaves, is_mapped)]
      return fn(*jax.tree.unflatten(tree, full))

    return jax.lax.map(one, xs)

  return mapped


# ---------------------------------------------------- jitted, cached pieces


@_cached
def _jitted_source_init(spec, mesh):
  """``(keys [S], start) -> source state``, replicated."""
  return jax.jit(spec.init, out_shardings=NamedSharding(mesh, P()))


@_cached
def _jitted_chunk(objective, optimizer, spec, hook, mesh, n_steps, seed_axis):
  """``chunk(states, src, keys, data, start) -> (states, src, metrics)``.

  ``states``: the seeds' stacked :class:`TrainState`; ``src``: the batch
  source's state (e.g. the current epoch's permutations ``[S, n]``);
  ``keys``: ``[S]`` seed keys; ``data``: the source's device arrays;
  ``start``: int32, the global step of the chunk's first update. Runs
  ``n_steps`` updates in one ``lax.scan``: at step ``t``, ``hook`` (if any,
  per seed), the source's batch, the objective's update (per seed, by
  ``vmap`` or ``lax.map`` as ``seed_axis`` says) and the source's state
  update. ``metrics`` leaves are ``[n_steps, S]``.
  ``states`` and ``src`` are donated.
  """
  step_fn = make_train_step_with_aux(objective, optimizer)

  def chunk(states, src, keys, data, start):
    dkeys = data_keys(keys)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, STEP_TAG))(keys)

    def body(carry, t):
      states, src = carry
      if hook is not None:
        states = jax.vmap(hook, in_axes=(0, None))(states, t)
      batch, src = spec.next(src, data, dkeys, t, mesh)
      ks = jax.vmap(lambda k: jax.random.fold_in(k, t))(step_keys)
      states, metrics, model_aux = per_seed(
        step_fn, (0, spec.batch_in_axes, 0), seed_axis
      )(states, batch, ks)
      src = spec.update(src, model_aux)
      return (states, src), metrics

    ts = start + jnp.arange(n_steps, dtype=jnp.int32)
    (states, src), metrics = jax.lax.scan(body, (states, src), ts)
    return states, src, metrics

  return jax.jit(
    chunk, donate_argnums=(0, 1), out_shardings=NamedSharding(mesh, P())
  )


@_cached
def _jitted_keys(mesh):
  """``uint32 seeds [S] -> typed keys [S]``, replicated over ``mesh``."""
  return jax.jit(
    jax.vmap(jax.random.key), out_shardings=NamedSharding(mesh, P())
  )


@_cached
def _jitted_init_params(init_params, mesh):
  def init(keys):
    return jax.vmap(lambda k: init_params(jax.random.fold_in(k, INIT_TAG)))(
      keys
    )

  return jax.jit(init, out_shardings=NamedSharding(mesh, P()))


@_cached
def _jitted_init_state(optimizer, mesh):
  return jax.jit(
    jax.vmap(lambda p: init_state(p, optimizer)),
    out_shardings=NamedSharding(mesh, P()),
  )


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
  if not leaves or any(
    np.ndim(l) < 1 or np.shape(l)[0] != n_seeds for l in leaves
  ):
    raise ValueError(
      "init_params must be a callable init(key) -> params or a pytree "
      f"whose leaves all have a leading seed axis of size {n_seeds}."
    )
  return params


# ----------------------------------------------------------- host helpers


class _Means:
  """Per-seed running sums of the step metrics since the last record."""

  def __init__(self, sums=None, count=0):
    self.sums = {k: np.asarray(v, np.float64) for k, v in (sums or {}).items()}
    self.count = int(count)

  def add(self, metrics: dict, ok: np.ndarray | None = None) -> None:
    for k, v in metrics.items():
      total = np.sum(np.asarray(v, np.float64), axis=0)
      if ok is not None:
        total = np.where(ok, total, np.nan)
      self.sums[k] = self.sums.get(k, 0.0) + total
    self.count += int(np.shape(metrics["loss"])[0])

  def pop(self) -> dict:
    if not self.count:
      return {}
    out = {k: (v / self.count).tolist() for k, v in self.sums.items()}
    self.sums, self.count = {}, 0
    return out

  def to_json(self) -> dict:
    return {
      "sums": {k: v.tolist() for k, v in self.sums.items()},
      "count": self.count,
    }


def _first_bad(metrics: dict, start: int, seeds, skip=()) -> dict:
  """``{seed: (step, metrics at it)}`` of seeds whose loss or gradient norm
  became non-finite in this chunk (``skip``: seeds already failed)."""
  bad = ~(np.isfinite(metrics["loss"]) & np.isfinite(metrics["grad_norm"]))
  out = {}
  for j, s in enumerate(seeds):
    if s not in skip and bad[:, j].any():
      i = int(np.argmax(bad[:, j]))
      out[s] = (start + i, {k: float(v[i, j]) for k, v in metrics.items()})
  return out


def _select(mask, new, old):
  """Per seed (leading axis), ``new`` where ``mask`` else ``old``."""
  mask = jnp.asarray(mask)
  return jax.tree.map(
    lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
    new,
    old,
  )


def _progress_bar(enabled: bool, total: int, initial: int, desc: str):
  if not enabled:
    return None
  try:
    from tqdm.auto import tqdm
  except ImportError:
    return None
  return tqdm(
    total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True
  )


# -------------------------------------------------------------------- train


def train(
  apply: _sites.Apply,
  objective: Objective,
  optimizer: optax.GradientTransformation,
  init_params: Callable[[Array], Any] | Any,
  train_data: Batch | _sources.Source,
  *,
  steps: int,
  batch_size: int = 128,
  seeds: Sequence[int] = (0,),
  chunk_size: int = 100,
  eval_data: Mapping[str, Batch] | Callable[[Any], dict] | None = None,
  eval_every: int = 1,
  eval_at_start: bool = False,
  eval_batch_size: int = 1000,
  loss: str = "softmax_cross_entropy",
  preprocess: Callable[[Any, Any], Batch] | None = None,
  hook: Hook | None = None,
  on_nan: str = "raise",
  keep_best: Best | tuple[str, str] | None = None,
  run_dir: str | None = None,
  run_name: str = "run",
  checkpoint_every: int = 1,
  keep_checkpoints: int = 2,
  async_checkpoints: bool = True,
  resume: bool = True,
  writers: Sequence[_writers.MetricWriter] = (),
  tensorboard: bool = False,
  devices: Sequence[Any] | int | None = None,
  seed_axis: str = "auto",
  progress: bool = True,
  callback: Callable[[dict], None] | None = None,
) -> TrainResult:
  """Trains ``S`` seeds of one model under one objective.

  The loop runs ``ceil(steps / chunk_size)`` chunks; each chunk is one call of
  a jitted ``lax.scan`` over ``chunk_size`` steps (the last one may be
  shorter, which costs one more compilation: make ``steps`` a multiple of
  ``chunk_size`` to compile once). Inside the scan, at every step ``t``:
  ``hook`` (if given), the batch from the source, the objective's update.
  Between chunks, on the host: the NaN check, evaluation every
  ``eval_every`` chunks (and after the last), a record to ``metrics.jsonl``
  (and any ``writers``), best-parameter tracking, a checkpoint every
  ``checkpoint_every`` chunks (and after the last), ``callback``, and the
  progress bar.

  Seeds are a leading axis of every state leaf; the seeds' updates run
  batched (``vmap``) or one after another in the same program (``lax.map``),
  as ``seed_axis`` says. The parameters of seed ``s`` are
  ``init_params(fold_in(jax.random.key(s), INIT_TAG))`` (computed under
  ``vmap``, so ``init_params`` must accept a traced typed key, as
  :func:`dropjax.models.make_init` does; or computed once by
  :func:`init_seeds` and passed in), and every state leaf carries a leading
  ``[S]`` axis. With random batches the data order of seed ``s`` in epoch
  ``e`` is ``permutation(fold_in(fold_in(key(s), DATA_TAG), e), n)``
  (consecutive slices of ``batch_size``; the ``n % batch_size`` left-over
  examples of each permutation are skipped; see
  :class:`dropjax.train.sources.RandomBatches`), and the objective's key at
  step ``t`` is ``fold_in(fold_in(key(s), STEP_TAG), t)``: every number
  depends only on ``(seed, step)``, so resumption is exact and a seed
  trained alone or with others sees the same data and noise.

  The data set lives on device, replicated on every device of the mesh; the
  batch axis (of every step and of evaluation) is sharded over the mesh axis
  ``"data"``; parameters and optimizer state are replicated. With one device
  this is plain single-device training.

  The jitted programs are kept in one bounded cache
  (:mod:`dropjax.train.cache`) keyed on the (objective, optimizer, source,
  hook, model, mesh, sizes) objects, so another run with the same objects in
  the same process does not recompile (:func:`clear_compile_cache` forgets
  them).

  Args:
    apply: the model ``apply(params, x, sites)`` (used for evaluation).
    objective: ``(params, batch, key) -> (loss, aux)`` for ``apply``.
    optimizer: an optax transformation (:func:`make_optimizer`).
    init_params: ``init(key) -> params`` for one seed (vmapped over the
      seeds' init keys), or parameters already stacked over the seeds
      (``[S, ...]`` leaves, e.g. from :func:`init_seeds`; they are copied,
      never donated).
    train_data: ``(x, y)`` host arrays with ``n`` examples on the leading
      axis (random minibatches of ``batch_size``, see ``preprocess``), or a
      :class:`dropjax.train.sources.Source`, e.g.
      :func:`dropjax.train.bptt_stream` for truncated BPTT with a carried
      recurrent state (``batch_size`` and ``preprocess`` are then unused).
    steps: total number of updates (counting those of a resumed run).
    batch_size: examples per step, divisible by the number of devices and
      at most ``n``.
    seeds: the seeds trained at once (distinct ints in ``[0, 2**32)``).
    chunk_size: steps per jit call.
    eval_data: ``{name: (x, y)}`` sets evaluated without dropout (e.g.
      ``{"validation": ..., "test": ...}``: loss and accuracy, sharded), or
      an evaluator ``f(params_s) -> {name: {metric: [S]}}`` (e.g.
      :class:`dropjax.train.StreamEvaluator`); ``None`` or empty: no
      evaluation.
    eval_every: evaluate (and write a record) every this many chunks; the
      last chunk always gets one.
    eval_at_start: also write a record at step 0 (before training).
    eval_batch_size: examples per evaluation forward pass (bounds memory);
      divisible by the number of devices.
    loss: the loss evaluation reports (:data:`dropjax.losses.LOSSES`).
    preprocess: ``(x, y) -> (x, y)`` applied inside jit to each training
      and evaluation batch (one seed's batch), e.g. uint8 to float32.
    hook: ``hook(state, t) -> state`` for one seed's :class:`TrainState`
      and the int32 global step ``t``, run inside the jitted chunk before
      step ``t``'s update, under ``vmap`` over the seeds (e.g.
      :func:`dropjax.analysis.pruning_hook`: gradual pruning's re-masking;
      or a rate/coefficient schedule kept in the optimizer state). It must
      keep the state's structure, shapes and dtypes.
    on_nan: what a non-finite loss or gradient norm does: ``"raise"`` stops
      the run with :class:`NonFiniteLossError`; ``"drop_seed"`` records the
      failed seed (run, seed, step, metrics; printed to stderr and written
      to ``failures.json``), reports its metrics as NaN from then on, and
      the other seeds go on (the run stops early only if every seed failed).
    keep_best: keep each seed's best parameters by an evaluation metric:
      a :class:`Best` or ``(split, metric)`` (mode as in :class:`Best`).
      Needs evaluation; the best parameters are checkpointed with the rest.
    run_dir: directory for ``metrics.jsonl``, ``summary.json``,
      ``failures.json``, ``checkpoints/`` and ``tensorboard/``; ``None``
      writes nothing and cannot resume.
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
    writers: more :class:`dropjax.train.writers.MetricWriter` objects that
      get every record.
    tensorboard: also write the records as TensorBoard scalars to
      ``run_dir/tensorboard`` (needs ``tensorboardX`` and ``run_dir``).
    devices: the devices of the mesh (see :func:`make_mesh`).
    seed_axis: how the seeds' updates run inside a chunk: ``"vmap"``
      (batched), ``"map"`` (one after another, ``lax.map``) or ``"auto"``
      (the backend's default, :data:`DEFAULT_SEED_AXIS`: ``"vmap"`` on the
      backends measured). It changes speed, not what is computed: with
      ``"map"`` a seed's numbers are bit for bit those of the seed trained
      alone; with ``"vmap"`` XLA's batched matmuls may sum in another order
      (last-bit differences that training can amplify).
    progress: show a tqdm bar (process 0 only).
    callback: ``callback(info)`` after each chunk's bookkeeping, with
      ``info = {"step", "chunk", "train": {metric: [[S]] per step},
      "record": dict or None, "state": TrainState}`` (the state is donated
      to the next chunk: copy what you keep). An exception raised there
      propagates (after pending checkpoint writes finish), e.g. to stop a
      run early.

  Returns:
    A :class:`TrainResult`.

  Raises:
    NonFiniteLossError: with ``on_nan="raise"``, when a seed's loss or
      gradient norm is NaN/inf. It names ``run_name``, the seed(s) and the
      first bad step. Metrics and checkpoints written before the failing
      chunk stay; ``failures.json`` is written to ``run_dir``.
    ValueError: inconsistent sizes (batch vs data or devices, steps < 1,
      ...), an unknown ``on_nan``, ``keep_best`` without evaluation, or a
      checkpoint in ``run_dir`` made with other seeds, batch size, data size
      or run name, or beyond ``steps``.
  """
  seeds = _check_seeds(seeds)
  seed_axis = resolve_seed_axis(seed_axis)
  _losses.check_loss(loss)
  if on_nan not in NAN_POLICIES:
    raise ValueError(
      f"unknown on_nan {on_nan!r}; valid: {', '.join(NAN_POLICIES)}."
    )
  if steps < 1 or chunk_size < 1 or eval_every < 1 or checkpoint_every < 0:
    raise ValueError(
      "steps, chunk_size and eval_every must be >= 1 and checkpoint_every >= 0."
    )
  if isinstance(train_data, _sources.Source):
    source = train_data
  else:
    source = _sources.random_batches(*train_data, batch_size, preprocess)
  spec = source.spec
  mesh = make_mesh(devices)
  n_dev = mesh.devices.size
  if isinstance(spec, _sources.RandomBatches) and spec.batch_size % n_dev:
    raise ValueError(
      f"batch_size ({spec.batch_size}) must be divisible by "
      f"the number of devices ({n_dev})."
    )
  if isinstance(spec, _sources.BPTTStream) and spec.shape[1] % n_dev:
    raise ValueError(
      f"the number of streams ({spec.shape[1]}) must be "
      f"divisible by the number of devices ({n_dev})."
    )
  if isinstance(keep_best, tuple):
    keep_best = Best(*keep_best)
  steps_per_epoch = spec.steps_per_epoch
  is_main = jax.process_index() == 0
  replicated = NamedSharding(mesh, P())
  failures: dict = {}

  # Evaluation.
  if eval_data is None or callable(eval_data):
    evaluator = eval_data
  else:
    if eval_data and eval_batch_size % n_dev:
      raise ValueError(
        f"eval_batch_size ({eval_batch_size}) must be "
        f"divisible by the number of devices ({n_dev})."
      )
    evaluator = _evaluation.ClassifierEvaluator(
      apply,
      eval_data,
      loss=loss,
      preprocess=preprocess,
      batch_size=eval_batch_size,
      mesh=mesh,
    )
  if evaluator is not None and not evaluator:
    evaluator = None
  if keep_best is not None and evaluator is None:
    raise ValueError("keep_best needs evaluation (eval_data).")
  maximise = keep_best.maximise if keep_best is not None else False

  data_dev = spec.device_data(source.arrays, mesh)
  keys = _jitted_keys(mesh)(np.asarray(seeds, np.uint32))
  if callable(init_params):
    params0 = _jitted_init_params(init_params, mesh)(keys)
  else:  # a fresh replicated copy: the caller's arrays are never donated
    params0 = jax.tree.map(
      lambda a: (
        jax.device_put(a, replicated, may_alias=False)
        if isinstance(a, jax.Array)
        else _sources.put_replicated(a, mesh)
      ),
      _check_stacked(init_params, len(seeds)),
    )
  init_all = _jitted_init_state(optimizer, mesh)

  jsonl = None
  if run_dir is not None:
    run_dir = os.fspath(run_dir)
    if is_main:
      os.makedirs(run_dir, exist_ok=True)
    jsonl = _writers.JsonlWriter(
      os.path.join(run_dir, METRICS_FILE), enabled=is_main
    )
  extra_writers = list(writers)
  if tensorboard:
    if run_dir is None:
      raise ValueError("tensorboard=True needs a run_dir.")
    if is_main:
      extra_writers.append(
        _writers.TensorBoardWriter(os.path.join(run_dir, TENSORBOARD_DIR))
      )
  ckpt = None
  if run_dir is not None and (checkpoint_every or resume):
    ckpt = Checkpoints(
      os.path.join(run_dir, CHECKPOINT_DIR), keep_checkpoints, async_checkpoints
    )
  # What a checkpoint must match to be resumed (checkpoint_format: the
  # layout of the saved tree, {"state", "source"[, "best"]}; older
  # checkpoints, without the batch source's state, have none).
  meta_fixed = {
    "run_name": run_name,
    "seeds": list(seeds),
    **spec.meta(),
    "checkpoint_format": CHECKPOINT_FORMAT,
    "keep_best": (
      [keep_best.split, keep_best.metric, maximise]
      if keep_best is not None
      else None
    ),
  }

  bar = None
  try:
    # ----------------------------------------------------- start or resume
    start, means, seconds_before = 0, _Means(), 0.0
    best_value = np.full((len(seeds),), -np.inf if maximise else np.inf)
    best_step = {s: 0 for s in seeds}
    latest = ckpt.latest() if (ckpt is not None and resume) else None
    init_source = _jitted_source_init(spec, mesh)
    if latest is not None:
      meta = ckpt.meta(latest)
      for k, v in meta_fixed.items():
        if meta.get(k) != v:
          raise ValueError(
            f"checkpoint in {run_dir} has {k}={meta.get(k)!r}, this run "
            f"has {v!r}; use another run_dir or resume=False."
          )
      if int(meta["step"]) > steps:
        raise ValueError(
          f"checkpoint in {run_dir} is at step "
          f"{meta['step']}, beyond steps={steps}."
        )
      # Shapes only: the restored arrays replace the initial ones.
      shapes = {
        "state": jax.eval_shape(init_all, params0),
        "source": jax.eval_shape(init_source, keys, jnp.int32(0)),
      }
      if keep_best is not None:
        shapes["best"] = shapes["state"].params
      abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
        shapes,
      )
      restored = ckpt.state(latest, abstract)
      state, src = restored["state"], restored["source"]
      best_params = restored.get("best")
      start = int(meta["step"])
      means = _Means(meta["means"]["sums"], meta["means"]["count"])
      seconds_before = float(meta["train_seconds"])
      failures = {int(s): f for s, f in meta.get("failures", {}).items()}
      if keep_best is not None:
        best_value = np.asarray(meta["best_value"], np.float64)
        best_step = {int(s): int(t) for s, t in meta["best_step"].items()}
    else:
      state = init_all(params0)
      src = init_source(keys, jnp.int32(0))
      best_params = (
        jax.tree.map(jnp.copy, state.params) if keep_best is not None else None
      )
    del params0
    resumed_from = start
    history = []
    if jsonl is not None:
      # Records after the checkpoint we resume from (all of them for a
      # fresh run) are dropped; they are redone identically.
      history = jsonl.start(start if latest is not None else None)
      if (
        is_main
        and os.path.exists(os.path.join(run_dir, FAILURE_FILE))
        and not failures
      ):
        os.unlink(os.path.join(run_dir, FAILURE_FILE))
    for w in extra_writers:
      w.start(start)

    def ok_mask() -> np.ndarray:
      return np.array([s not in failures for s in seeds])

    def record(step, train_means, seconds, params) -> dict:
      nonlocal best_params, best_value
      ev = {}
      if evaluator is not None:
        ok = ok_mask()
        for name, metrics in evaluator(params).items():
          ev[name] = {
            k: np.where(ok, np.asarray(v, np.float64), np.nan).tolist()
            if failures
            else np.asarray(v).tolist()
            for k, v in metrics.items()
          }
      rec = {
        "run": run_name,
        "step": int(step),
        "epoch": step / steps_per_epoch,
        "seeds": list(seeds),
        "train_seconds": seconds,
        "train": train_means,
        "eval": ev,
      }
      if keep_best is not None:
        vals = np.asarray(ev[keep_best.split][keep_best.metric], np.float64)
        better = ok_mask() & (
          (vals > best_value) if maximise else (vals < best_value)
        )
        if better.any():
          best_params = _select(better, params, best_params)
          best_value = np.where(better, vals, best_value)
          for j, s in enumerate(seeds):
            if better[j]:
              best_step[s] = int(step)
      history.append(rec)
      if jsonl is not None:
        jsonl.write(rec)
      for w in extra_writers:
        w.write(rec)
      return rec

    def fail_file():
      if run_dir is not None and is_main:
        _files.write_json_atomic(
          os.path.join(run_dir, FAILURE_FILE),
          {
            "run": run_name,
            "seeds": list(seeds),
            "policy": on_nan,
            "failures": {str(s): f["step"] for s, f in failures.items()},
            "metrics": {str(s): f["metrics"] for s, f in failures.items()},
            "messages": {str(s): f["message"] for s, f in failures.items()},
          },
        )

    bar = _progress_bar(progress and is_main, steps, start, run_name)

    # ------------------------------------------------------------- chunks
    if start == 0 and eval_at_start and evaluator is not None:
      record(0, {}, 0.0, state.params)
    t_train = 0.0
    chunk_idx = start // chunk_size
    while start < steps and len(failures) < len(seeds):
      n = min(chunk_size, steps - start)
      fn = _jitted_chunk(objective, optimizer, spec, hook, mesh, n, seed_axis)
      t0 = time.perf_counter()
      state, src, metrics = fn(state, src, keys, data_dev, jnp.int32(start))
      metrics = jax.device_get(metrics)  # waits for the chunk
      t_train += time.perf_counter() - t0
      new_bad = _first_bad(metrics, start, seeds, skip=failures)
      if new_bad and on_nan == "raise":
        failures.update(
          {
            s: {"step": t, "metrics": m, "message": f"seed {s} at step {t}"}
            for s, (t, m) in new_bad.items()
          }
        )
        raise NonFiniteLossError(
          run_name,
          {s: t for s, (t, _) in new_bad.items()},
          {s: m for s, (_, m) in new_bad.items()},
          list(history),
        )
      for s, (t, m) in new_bad.items():
        msg = (
          f"run {run_name!r}, seed {s}: non-finite loss or gradient at "
          f"step {t} ({_fmt_metrics(m)}); this seed is stopped, the "
          "others continue."
        )
        failures[s] = {"step": t, "metrics": m, "message": msg}
        print(msg, file=sys.stderr, flush=True)
      if new_bad:
        fail_file()
      start += n
      chunk_idx += 1
      means.add(metrics, ok_mask() if failures else None)
      last = start >= steps or len(failures) == len(seeds)
      seconds = seconds_before + t_train
      rec = None
      if last or chunk_idx % eval_every == 0:
        rec = record(start, means.pop(), seconds, state.params)
      if ckpt is not None and (
        last or (checkpoint_every and chunk_idx % checkpoint_every == 0)
      ):
        tree = {"state": state, "source": src}
        meta = dict(
          meta_fixed,
          step=start,
          steps=steps,
          means=means.to_json(),
          train_seconds=seconds,
          failures={str(s): f for s, f in failures.items()},
        )
        if keep_best is not None:
          tree["best"] = best_params
          meta["best_value"] = best_value.tolist()
          meta["best_step"] = {str(s): t for s, t in best_step.items()}
        ckpt.save(start, tree, meta)
      if bar is not None:
        shown = metrics.get("data_loss", metrics["loss"])
        post = {"loss": f"{float(np.nanmean(shown[-1])):.4f}"}
        for name, ev in (rec["eval"] if rec else {}).items():
          metric = "accuracy" if "accuracy" in ev else next(iter(ev))
          post[f"{name}_{metric}"] = f"{float(np.nanmean(ev[metric])):.4f}"
          break
        bar.set_postfix(post, refresh=False)
        bar.update(n)
      if callback is not None:
        callback(
          {
            "step": start,
            "chunk": chunk_idx,
            "train": {k: v.tolist() for k, v in metrics.items()},
            "record": rec,
            "state": state,
          }
        )
  except NonFiniteLossError:
    fail_file()
    raise
  finally:
    if bar is not None:
      bar.close()
    if ckpt is not None:
      ckpt.close()
    for w in extra_writers:
      w.close()

  total_seconds = seconds_before + t_train
  if run_dir is not None and is_main:
    _files.write_json_atomic(
      os.path.join(run_dir, SUMMARY_FILE),
      {
        "run": run_name,
        "seeds": list(seeds),
        "steps": steps,
        **spec.meta(),
        "devices": n_dev,
        "train_seconds": total_seconds,
        "failures": {str(s): f for s, f in failures.items()},
        "best_step": (
          {str(s): t for s, t in best_step.items()}
          if keep_best is not None
          else None
        ),
        "final": history[-1] if history else None,
      },
    )
  best_vals = None
  if keep_best is not None:
    best_vals = {
      s: (float(v) if np.isfinite(v) else None)
      for s, v in zip(seeds, best_value)
    }
  return TrainResult(
    state=state,
    history=history,
    seeds=seeds,
    run_dir=run_dir,
    resumed_from=resumed_from,
    train_seconds=total_seconds,
    failures=failures,
    best_params=best_params,
    best_step=best_step if keep_best is not None else None,
    best_value=best_vals,
  )
