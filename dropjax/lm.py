"""Language-model training: truncated BPTT with a carried state, bits per char.

The generic loop of :mod:`dropjax.train` draws random examples; a recurrent
language model instead reads ``batch`` parallel streams in order, one
fixed-length chunk (``[batch, bptt]`` tokens, from
:func:`dropjax.data.text.bptt_batches`) per step, and carries the recurrent
state from one chunk to the next (gradients are truncated at chunk
boundaries: ``stop_gradient`` on the carry). This module provides that loop
for any dropjax objective built with ``has_aux=True`` on a model
``apply(params, (tokens, carry), sites) -> (logits, new_carry)`` (e.g.
:class:`dropjax.models.lstm.LSTMLanguageModel`):

* :func:`make_lm_step` -- one update; the new carry is the objective's
  ``model_aux`` (for DROPOUT_k the first mask's pass, for the analytic
  regimens the clean pass).
* :func:`train_lm` -- ``S`` seeds at once (``vmap``), one ``jit`` call per
  chunk of steps (a ``lax.scan``), evaluation / JSONL / orbax checkpoints /
  tqdm between calls, exact resumption, and per-seed NaN handling: a seed
  whose loss or gradient becomes non-finite is reported (run, seed, step)
  and dropped from the results while the other seeds go on.
* :func:`evaluate_lm` -- mean cross-entropy over a whole split, read in
  order with a carried state (no dropout), and :func:`bits_per_token`.

Randomness, for seed ``s`` with ``k = jax.random.key(s)``: initial
parameters ``init_params(fold_in(k, INIT_TAG))``; the objective's key at step
``t`` (``t`` updates done before it) ``fold_in(fold_in(k, STEP_TAG), t)``.
The data order is fixed: step ``t`` reads chunk ``t mod num_chunks``, and the
carry is reset to zeros at the start of every epoch (chunk 0). So a resumed
run replays an uninterrupted one exactly, and seed ``s`` gives the same
numbers alone or among other seeds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dropjax.train import files as _files
import optax

from dropjax import losses as _losses
from dropjax import sites as _sites
from dropjax.train import INIT_TAG, STEP_TAG, read_jsonl, write_json_atomic

Array = jax.Array
Objective = Callable[[Any, tuple, Array], tuple[Array, dict]]

METRICS_FILE = "metrics.jsonl"
FAILURE_FILE = "failures.json"
CHECKPOINT_DIR = "checkpoints"
LN2 = math.log(2.0)


class LMState(NamedTuple):
  """What one language model carries from step to step.

  Attributes:
    params: parameter pytree.
    opt_state: optax state.
    step: int32 scalar, updates done.
    carry: the recurrent state after the last chunk (no gradient flows
      through it into the next chunk).

  In :func:`train_lm` every leaf has a leading seed axis ``[S, ...]``.
  """
  params: Any
  opt_state: Any
  step: Array
  carry: Any


def bits_per_token(mean_nats) -> Any:
  """``mean cross-entropy / ln 2``: bits per character (or per word)."""
  return mean_nats / LN2


def make_lm_step(objective: Objective, optimizer: optax.GradientTransformation
                 ) -> Callable[[LMState, Array, Array, Array],
                               tuple[LMState, dict]]:
  """One truncated-BPTT update as a pure function.

  Args:
    objective: ``(params, ((tokens, carry), targets), key) -> (loss, aux)``
      with ``aux["model_aux"]`` the model's new carry (any objective of
      :mod:`dropjax.objectives` built with ``has_aux=True``).
    optimizer: an optax transformation.

  Returns:
    ``step(state, tokens, targets, key) -> (state, metrics)`` with
    ``tokens``/``targets`` int ``[B, T]``. ``metrics``: float scalars
    ``loss`` (the objective), ``data_loss``, ``explicit``, ``implicit`` and
    ``grad_norm``.

  Raises:
    KeyError: (when traced) if the objective's aux has no ``model_aux``.
  """
  grad_fn = jax.value_and_grad(objective, has_aux=True)

  def step(state: LMState, tokens: Array, targets: Array, key: Array):
    batch = ((tokens, state.carry), targets)
    (loss, aux), grads = grad_fn(state.params, batch, key)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params)
    params = optax.apply_updates(state.params, updates)
    carry = jax.lax.stop_gradient(aux["model_aux"])
    carry = jax.tree.map(lambda new, old: new.astype(old.dtype), carry,
                         state.carry)
    metrics = {"loss": loss}
    for k in ("data_loss", "explicit", "implicit"):
      if k in aux:
        metrics[k] = aux[k]
    metrics["grad_norm"] = optax.global_norm(grads)
    return LMState(params, opt_state, state.step + 1, carry), metrics

  return step


# ---------------------------------------------------------------- evaluation


def _eval_one(apply, params, inputs, targets, carry0):
  """Sum of the CE over ``inputs [C, B, T]`` read in order (float32 scalar)."""

  def body(carry_sum, chunk):
    carry, total = carry_sum
    x, y = chunk
    logits, carry = apply(params, (x, carry), _sites.identity_sites)
    ce = _losses.per_position_loss("softmax_cross_entropy", logits, y)
    return (carry, total + jnp.sum(ce.astype(jnp.float32))), None

  (_, total), _ = jax.lax.scan(body, (carry0, jnp.zeros((), jnp.float32)),
                               (inputs, targets))
  return total


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """A split prepared for :func:`evaluate_lm`.

  Attributes:
    inputs, targets: int32 ``[C, B, T]`` from
      :func:`dropjax.data.text.bptt_batches` of a ``batchify``-ed stream.
    num_tokens: ``C * B * T``, the number of predictions averaged.
  """
  inputs: Any
  targets: Any

  @property
  def num_tokens(self) -> int:
    return int(np.prod(np.shape(self.targets)))


def make_eval_set(ids, batch_size: int, bptt: int,
                  max_tokens: int | None = None) -> EvalSet:
  """Cuts a 1-D token stream into an :class:`EvalSet`.

  Args:
    ids: int token ids ``[n]`` (a corpus split).
    batch_size: parallel streams.
    bptt: chunk length (only affects memory and speed, not the result
      beyond the dropped tail: the state is carried across chunks).
    max_tokens: use only the first ``max_tokens`` ids (``None``: all).

  Returns:
    The set; the last ``< batch_size * bptt + batch_size`` tokens of the
    stream are not predicted (fixed shapes).

  Raises:
    ValueError: if the stream is too short for one chunk.
  """
  from dropjax.data import text as _text
  ids = np.asarray(ids)
  if max_tokens is not None:
    ids = ids[:max_tokens]
  x, y = _text.bptt_batches(_text.batchify(ids, batch_size), bptt)
  return EvalSet(x, y)


def evaluate_lm(apply: _sites.Apply, params, eval_set: EvalSet,
                init_carry: Callable[[int], Any], *, stacked: bool = False
                ) -> np.ndarray:
  """Mean cross-entropy (nats per token) of a split, without dropout.

  The split's ``B`` streams are read in order from a zero state, the state
  carried across chunks (as at training time).

  Args:
    apply: ``apply(params, (tokens, carry), sites) -> (logits, carry)``.
    params: one model's parameters, or ``S`` models' stacked on a leading
      axis when ``stacked``.
    eval_set: from :func:`make_eval_set`.
    init_carry: ``init_carry(batch_size) -> carry`` (zeros).
    stacked: ``params`` has a leading seed axis.

  Returns:
    float64 numpy scalar, or ``[S]`` when ``stacked``. Divide by ``ln 2``
    (:func:`bits_per_token`) for bits per character.
  """
  fn = _eval_fn(apply, init_carry, int(np.shape(eval_set.inputs)[1]))
  p = params if stacked else jax.tree.map(lambda a: a[None], params)
  total = np.asarray(fn(p, jnp.asarray(eval_set.inputs),
                        jnp.asarray(eval_set.targets)), np.float64)
  out = total / eval_set.num_tokens
  return out if stacked else out[0]


_EVAL_CACHE: dict = {}


def _eval_fn(apply, init_carry, batch_size):
  key = (apply, init_carry, batch_size)
  if key not in _EVAL_CACHE:
    carry0 = init_carry(batch_size)

    def run(params_s, inputs, targets):
      return jax.vmap(lambda p: _eval_one(apply, p, inputs, targets, carry0)
                      )(params_s)

    _EVAL_CACHE[key] = jax.jit(run)
  return _EVAL_CACHE[key]


# ---------------------------------------------------------------------- loop


@dataclasses.dataclass
class LMTrainResult:
  """What :func:`train_lm` returns.

  Attributes:
    state: final :class:`LMState`, leaves ``[S, ...]``.
    best_params: per seed, the parameters at its best evaluation on
      ``curve_set`` (the final ones when there is no curve set).
    best_step: ``{seed: step}`` of those parameters.
    history: the evaluation records (lines of ``metrics.jsonl``).
    failures: ``{seed: {"step", "message", "metrics"}}`` for seeds stopped
      by a non-finite loss or gradient.
    seeds: the seeds, in the order of the leading axis.
    train_seconds: wall time in training chunks (all calls, if resumed).
    resumed_from: the step this call started from.
  """
  state: LMState
  best_params: Any
  best_step: dict
  history: list
  failures: dict
  seeds: tuple
  train_seconds: float
  resumed_from: int


_JIT_CACHE: dict = {}


def _cached(fn):
  """Memoises a jitted-function factory on its (hashable) arguments, so that
  calls of :func:`train_lm` with the same objective / optimizer / model
  compile once."""

  def wrapper(*args):
    key = (fn.__name__,) + args
    if key not in _JIT_CACHE:
      _JIT_CACHE[key] = fn(*args)
    return _JIT_CACHE[key]

  return wrapper


def clear_cache() -> None:
  """Forgets the memoised jitted functions (they keep their models alive)."""
  _JIT_CACHE.clear()
  _EVAL_CACHE.clear()


@_cached
def _init_fn(init_params, optimizer, init_carry, batch):
  carry_b = init_carry(batch)

  @jax.jit
  def init_all(keys):
    n_seeds = keys.shape[0]
    params = jax.vmap(lambda k: init_params(jax.random.fold_in(k, INIT_TAG))
                      )(keys)
    opt = jax.vmap(optimizer.init)(params)
    carry = jax.tree.map(lambda c: jnp.broadcast_to(c, (n_seeds,) + c.shape),
                         carry_b)
    return LMState(params, opt, jnp.zeros((n_seeds,), jnp.int32), carry)

  return init_all


@_cached
def _chunk_fn(objective, optimizer, init_carry, batch, num_chunks, n_steps):
  step_fn = make_lm_step(objective, optimizer)
  init_carry_b = init_carry(batch)

  def chunk(state, keys, inputs, targets, start):
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, STEP_TAG))(keys)

    def body(state, t):
      idx = t % num_chunks
      # A new epoch starts every stream from the zero state.
      carry = jax.tree.map(lambda c, z: jnp.where(idx == 0, z, c),
                           state.carry, init_carry_b)
      state = state._replace(carry=carry)
      x, y = inputs[idx], targets[idx]
      ks = jax.vmap(lambda k: jax.random.fold_in(k, t))(step_keys)
      return jax.vmap(step_fn, in_axes=(0, None, None, 0))(state, x, y, ks)

    ts = start + jnp.arange(n_steps, dtype=jnp.int32)
    return jax.lax.scan(body, state, ts)

  return jax.jit(chunk, donate_argnums=(0,))


def _select(mask, new, old):
  return jax.tree.map(
      lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
      new, old)


def train_lm(apply: _sites.Apply, objective: Objective,
             optimizer: optax.GradientTransformation,
             init_params: Callable[[Array], Any],
             init_carry: Callable[[int], Any],
             train_inputs, train_targets, *, steps: int,
             seeds: Sequence[int] = (0,), chunk_size: int = 50,
             eval_every: int = 1, curve_set: EvalSet | None = None,
             run_dir: str | None = None, run_name: str = "run",
             checkpoint_every: int = 1, resume: bool = True,
             progress: bool = True,
             callback: Callable[[dict], None] | None = None
             ) -> LMTrainResult:
  """Trains ``S`` seeds of a recurrent LM with truncated BPTT.

  Each step reads chunk ``t mod C`` of ``train_inputs``/``train_targets``
  (``[C, B, T]``, whose rows continue from chunk to chunk), starting from the
  carry left by the previous step (zeros at every epoch start). Each jit call
  runs ``chunk_size`` steps in a ``lax.scan``; between calls, on the host:
  the per-seed NaN check, evaluation on ``curve_set`` every ``eval_every``
  calls (and after the last) with a line in ``metrics.jsonl``, best-params
  tracking, an orbax checkpoint every ``checkpoint_every`` calls, the
  progress bar and ``callback``.

  Args:
    apply: ``apply(params, (tokens, carry), sites) -> (logits, carry)``.
    objective: built for ``apply`` with ``has_aux=True``.
    optimizer: optax transformation.
    init_params: ``init(key) -> params`` (``vmap``-able over typed keys).
    init_carry: ``init_carry(batch_size) -> carry`` (zeros).
    train_inputs, train_targets: int32 ``[C, B, T]``.
    steps: total updates (including those of a resumed run).
    seeds: distinct ints in ``[0, 2**32)``.
    chunk_size: steps per jit call (make ``steps`` a multiple of it to
      compile once).
    eval_every: evaluate every this many calls.
    curve_set: the split (or part of one) for the learning curve and the
      best-parameter selection; ``None``: no evaluation.
    run_dir: where ``metrics.jsonl``, ``failures.json`` and
      ``checkpoints/`` go; ``None`` writes nothing and cannot resume.
    run_name: names the run in records, messages and the progress bar.
    checkpoint_every: checkpoint every this many calls (0: only at the end).
    resume: continue from the latest checkpoint in ``run_dir``.
    progress: show a tqdm bar.
    callback: ``callback(info)`` after each call with ``info = {"step",
      "train": {metric: [S] of the call's last step}, "record"}``; an
      exception there propagates (how tests simulate a killed run).

  Returns:
    An :class:`LMTrainResult`. Seeds stopped by a NaN are in ``failures``
    (a message naming the run, seed and step is also printed); training
    stops early only when every seed has failed.

  Raises:
    ValueError: bad sizes or seeds, or a checkpoint from another
      configuration (different seeds or data shape) in ``run_dir``.
  """
  seeds = tuple(int(s) for s in seeds)
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise ValueError(f"seeds must be distinct non-negative ints, got {seeds}.")
  train_inputs = np.asarray(train_inputs, np.int32)
  train_targets = np.asarray(train_targets, np.int32)
  if train_inputs.ndim != 3 or train_inputs.shape != train_targets.shape:
    raise ValueError("train_inputs and train_targets must both be [C, B, T], "
                     f"got {train_inputs.shape} and {train_targets.shape}.")
  if steps < 1 or chunk_size < 1 or eval_every < 1 or checkpoint_every < 0:
    raise ValueError("steps, chunk_size, eval_every must be >= 1 and "
                     "checkpoint_every >= 0.")
  num_chunks, batch, _ = train_inputs.shape
  n_seeds = len(seeds)
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
  init_all = _init_fn(init_params, optimizer, init_carry, batch)

  inputs_dev = jnp.asarray(train_inputs)
  targets_dev = jnp.asarray(train_targets)
  meta_fixed = {"run_name": run_name, "seeds": list(seeds),
                "data_shape": list(train_inputs.shape)}

  metrics_path = ckpt_mgr = None
  if run_dir is not None:
    run_dir = os.fspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    metrics_path = os.path.join(run_dir, METRICS_FILE)
    import orbax.checkpoint as ocp
    ckpt_mgr = ocp.CheckpointManager(
        os.path.abspath(os.path.join(run_dir, CHECKPOINT_DIR)),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                             enable_async_checkpointing=False))

  state = None
  start = 0
  sums: dict = {}   # running sums of the training metrics since the last record
  count = 0
  failures: dict = {}
  best_val = np.full((n_seeds,), np.inf)
  best_step = {s: 0 for s in seeds}
  seconds_before = 0.0
  if ckpt_mgr is not None and resume and ckpt_mgr.latest_step() is not None:
    abstract = jax.eval_shape(init_all, keys)
    restored = ckpt_mgr.restore(ckpt_mgr.latest_step(),
                                args=ocp.args.Composite(
                                    state=ocp.args.StandardRestore(
                                        {"state": abstract,
                                         "best": abstract.params}),
                                    meta=ocp.args.JsonRestore()))
    meta = restored["meta"]
    for k, v in meta_fixed.items():
      if meta.get(k) != v:
        raise ValueError(f"checkpoint in {run_dir} has {k}={meta.get(k)!r}, "
                         f"this run {v!r}; use another run_dir or "
                         "resume=False.")
    state = restored["state"]["state"]
    best_params = restored["state"]["best"]
    start = int(meta["step"])
    failures = {int(s): f for s, f in meta["failures"].items()}
    best_val = np.asarray(meta["best_val"], np.float64)
    best_step = {int(s): int(t) for s, t in meta["best_step"].items()}
    seconds_before = float(meta["train_seconds"])
    sums = {k: np.asarray(v, np.float64) for k, v in meta["sums"].items()}
    count = int(meta["count"])
  if state is None:
    state = init_all(keys)
    best_params = jax.tree.map(jnp.copy, state.params)
  resumed_from = start
  history = [r for r in read_jsonl(metrics_path) if r["step"] <= start
             ] if metrics_path else []
  if metrics_path:
    write_json_lines(metrics_path, history)

  def chunk_fn(n):
    return _chunk_fn(objective, optimizer, init_carry, batch, num_chunks, n)

  bar = None
  if progress:
    try:
      from tqdm.auto import tqdm
      bar = tqdm(total=steps, initial=start, desc=run_name, unit="step",
                 dynamic_ncols=True)
    except ImportError:
      bar = None

  def save(step, seconds):
    if ckpt_mgr is None:
      return
    meta = dict(meta_fixed, step=int(step),
                failures={str(s): f for s, f in failures.items()},
                best_val=best_val.tolist(),
                best_step={str(s): t for s, t in best_step.items()},
                sums={k: np.asarray(v).tolist() for k, v in sums.items()},
                count=count, train_seconds=seconds)
    ckpt_mgr.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave({"state": state, "best": best_params}),
        meta=ocp.args.JsonSave(meta)), force=True)

  t_train = 0.0
  calls = start // chunk_size
  try:
    while start < steps and len(failures) < n_seeds:
      n = min(chunk_size, steps - start)
      t0 = time.perf_counter()
      state, metrics = chunk_fn(n)(state, keys, inputs_dev, targets_dev,
                                   jnp.int32(start))
      metrics = {k: np.asarray(v, np.float64) for k, v in
                 jax.device_get(metrics).items()}  # [n, S]
      t_train += time.perf_counter() - t0
      bad = ~(np.isfinite(metrics["loss"]) & np.isfinite(metrics["grad_norm"]))
      for j, s in enumerate(seeds):
        if s in failures or not bad[:, j].any():
          continue
        i = int(np.argmax(bad[:, j]))
        at = {k: float(v[i, j]) for k, v in metrics.items()}
        msg = (f"run {run_name!r}, seed {s}: non-finite loss or gradient at "
               f"step {start + i} (loss={at['loss']:.4g}, "
               f"grad_norm={at['grad_norm']:.4g}); this seed is stopped, the "
               "others continue.")
        failures[s] = {"step": start + i, "message": msg, "metrics": at}
        print(msg, flush=True)
        if run_dir is not None:
          write_json_atomic(os.path.join(run_dir, FAILURE_FILE),
                            {str(k): v for k, v in failures.items()})
      ok = np.array([s not in failures for s in seeds])
      for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + np.where(ok, v.sum(0), np.nan)
      count += n
      start += n
      calls += 1
      last = start >= steps
      rec = None
      if last or calls % eval_every == 0:
        rec = {"run": run_name, "step": start, "seeds": list(seeds),
               "epoch": start / num_chunks,
               "wall_s": seconds_before + t_train,
               "train": {k: (v / count).tolist() for k, v in sums.items()}}
        sums, count = {}, 0
        if curve_set is not None:
          nats = evaluate_lm(apply, state.params, curve_set, init_carry,
                             stacked=True)
          nats = np.where(ok, nats, np.nan)
          rec["eval"] = {"curve": {"loss": nats.tolist(),
                                   "bpc": (nats / LN2).tolist()}}
          better = ok & (nats < best_val)
          if better.any():
            best_params = _select(jnp.asarray(better), state.params,
                                  best_params)
            best_val = np.where(better, nats, best_val)
            for j, s in enumerate(seeds):
              if better[j]:
                best_step[s] = start
        else:
          best_params = _select(jnp.asarray(ok), state.params, best_params)
          for j, s in enumerate(seeds):
            if ok[j]:
              best_step[s] = start
        history.append(rec)
        if metrics_path:
          with open(metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
      if last or (checkpoint_every and calls % checkpoint_every == 0):
        save(start, seconds_before + t_train)
      if bar is not None:
        shown = metrics.get("data_loss", metrics["loss"])[-1]
        post = {"loss": f"{np.nanmean(np.where(ok, shown, np.nan)) / LN2:.3f}"
                        "bpc"}
        if rec is not None and "eval" in rec:
          post["val"] = f"{np.nanmean(rec['eval']['curve']['bpc']):.3f}"
        bar.set_postfix(post, refresh=False)
        bar.update(n)
      if callback is not None:
        callback({"step": start, "record": rec,
                  "train": {k: v[-1].tolist() for k, v in metrics.items()}})
  finally:
    if bar is not None:
      bar.close()
    if ckpt_mgr is not None:
      ckpt_mgr.wait_until_finished()
      ckpt_mgr.close()

  return LMTrainResult(state=state, best_params=best_params,
                       best_step=best_step, history=history,
                       failures=failures, seeds=seeds,
                       train_seconds=seconds_before + t_train,
                       resumed_from=resumed_from)


def write_json_lines(path: str, records: Sequence[Mapping]) -> None:
  """Rewrites a JSONL file atomically with ``records`` (one per line)."""
  _files.write_jsonl_atomic(path, records)
