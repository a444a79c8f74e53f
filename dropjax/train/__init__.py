"""Pure-JAX training: jitted steps, ``lax.scan`` chunks, ``vmap``-ped seeds.

The pieces, from the inside out:

* :func:`make_optimizer` -- Adam or SGD with momentum as an optax chain, with
  optional decoupled weight decay on the kernels and gradient clipping.
* :func:`make_train_step` -- one pure update
  ``step(state, batch, key) -> (state, metrics)`` for any dropjax objective
  ``(params, batch, key) -> (loss, aux)``.
* :func:`train` -- the engine: the whole data set on device; a batch
  source (:mod:`dropjax.train.sources`: random minibatches with per-epoch
  permutations drawn inside ``jit``, or truncated-BPTT token streams with a
  carried recurrent state); one ``jit`` call per *chunk* of steps (a
  ``lax.scan``) with an optional per-step state ``hook`` inside it (gradual
  pruning, schedules); ``S`` seeds trained in one program, batched by
  ``vmap`` or one after another by ``lax.map`` (``seed_axis``);
  data-parallel over the devices with ``NamedSharding``; between chunks,
  evaluation (:mod:`dropjax.train.evaluation`), metric writers (JSONL,
  TensorBoard: :mod:`dropjax.train.writers`), best-validation parameters,
  orbax checkpoints (:mod:`dropjax.train.checkpoint`) and a tqdm progress
  bar; exact resumption; one NaN policy (``raise`` or ``drop_seed``); one
  bounded cache of compiled programs (:mod:`dropjax.train.cache`).
* :class:`CompileStats` -- how many programs a run compiled and how long
  that took (:mod:`dropjax.train.compilation`).
* :func:`evaluate`, :func:`evaluate_stream`, :func:`write_json_atomic`,
  :func:`read_jsonl` -- helpers the experiments share.

Every random number is a function of ``(seed, step)``: with
``k = jax.random.key(seed)``, the initial parameters are
``init_params(fold_in(k, INIT_TAG))``, epoch ``e``'s data order is
``permutation(fold_in(fold_in(k, DATA_TAG), e), n)`` and the objective's key
at step ``t`` is ``fold_in(fold_in(k, STEP_TAG), t)``.

See ``docs/training.md`` for the whole story (sharding, multi-host,
checkpoints, the NaN policy, the JSONL format).

Example (two seeds of a small MLP with dropout; swap the objective for
``objectives.explicit_implicit(apply, rates=rates)`` to train with its
analytic replacement):

>>> import numpy as np
>>> from dropjax import models, objectives, train
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(64, 16)).astype(np.float32)
>>> y = (x[:, 0] > 0).astype(np.int32)
>>> apply, _, rates = models.make_model("mlp", layer_sizes=(16, 32, 2))
>>> result = train.train(
...     apply, objectives.dropout(apply, rates=rates),
...     train.make_optimizer("adam", 1e-2),
...     models.make_init("mlp", layer_sizes=(16, 32, 2)), (x, y),
...     steps=20, batch_size=16, seeds=(0, 1), chunk_size=10,
...     eval_data={"train": (x, y)}, devices=1, progress=False)
>>> [r["step"] for r in result.history]
[10, 20]
>>> result.state.params["output"]["kernel"].shape
(2, 32, 2)
"""

from dropjax.train.cache import clear as clear_compile_cache
from dropjax.train.checkpoint import Checkpoints
from dropjax.train.compilation import CompileStats
from dropjax.train.evaluation import ClassifierEvaluator
from dropjax.train.evaluation import EvalSet
from dropjax.train.evaluation import StreamEvaluator
from dropjax.train.evaluation import bits_per_token
from dropjax.train.evaluation import evaluate
from dropjax.train.evaluation import evaluate_stream
from dropjax.train.evaluation import make_eval_set
from dropjax.train.files import read_jsonl
from dropjax.train.files import write_json_atomic
from dropjax.train.loop import Best
from dropjax.train.loop import CHECKPOINT_DIR
from dropjax.train.loop import DATA_AXIS
from dropjax.train.loop import DATA_TAG
from dropjax.train.loop import FAILURE_FILE
from dropjax.train.loop import INIT_TAG
from dropjax.train.loop import METRICS_FILE
from dropjax.train.loop import NAN_POLICIES
from dropjax.train.loop import DEFAULT_SEED_AXIS
from dropjax.train.loop import NonFiniteLossError
from dropjax.train.loop import SEED_AXES
from dropjax.train.loop import STEP_TAG
from dropjax.train.loop import SUMMARY_FILE
from dropjax.train.loop import TENSORBOARD_DIR
from dropjax.train.loop import TrainResult
from dropjax.train.loop import data_keys
from dropjax.train.loop import init_seeds
from dropjax.train.loop import make_mesh
from dropjax.train.loop import per_seed
from dropjax.train.loop import resolve_seed_axis
from dropjax.train.loop import seed_keys
from dropjax.train.loop import train
from dropjax.train.optim import kernel_mask
from dropjax.train.optim import make_optimizer
from dropjax.train.sources import BPTTStream
from dropjax.train.sources import RandomBatches
from dropjax.train.sources import Source
from dropjax.train.sources import bptt_stream
from dropjax.train.sources import random_batches
from dropjax.train.step import TrainState
from dropjax.train.step import init_state
from dropjax.train.step import make_train_step
from dropjax.train.writers import JsonlWriter
from dropjax.train.writers import MetricWriter
from dropjax.train.writers import TensorBoardWriter

__all__ = [
  "BPTTStream",
  "Best",
  "CHECKPOINT_DIR",
  "Checkpoints",
  "CompileStats",
  "ClassifierEvaluator",
  "DATA_AXIS",
  "DATA_TAG",
  "DEFAULT_SEED_AXIS",
  "EvalSet",
  "FAILURE_FILE",
  "INIT_TAG",
  "JsonlWriter",
  "METRICS_FILE",
  "MetricWriter",
  "NAN_POLICIES",
  "NonFiniteLossError",
  "RandomBatches",
  "SEED_AXES",
  "STEP_TAG",
  "SUMMARY_FILE",
  "Source",
  "StreamEvaluator",
  "TENSORBOARD_DIR",
  "TensorBoardWriter",
  "TrainResult",
  "TrainState",
  "bits_per_token",
  "bptt_stream",
  "clear_compile_cache",
  "data_keys",
  "evaluate",
  "evaluate_stream",
  "init_seeds",
  "init_state",
  "kernel_mask",
  "make_eval_set",
  "make_mesh",
  "make_optimizer",
  "make_train_step",
  "per_seed",
  "random_batches",
  "read_jsonl",
  "resolve_seed_axis",
  "seed_keys",
  "train",
  "write_json_atomic",
]
