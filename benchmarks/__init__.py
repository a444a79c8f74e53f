"""Cost measurements of the dropjax regimens.

``python -m benchmarks.run --out results.json [--quick]`` times a full
training step (``jax.jit`` of ``value_and_grad`` + an Adam update) for every
regimen side by side, reads XLA's FLOP count and memory estimate of each
compiled step, times a PyTorch implementation of the same analytic
regularizers (:mod:`benchmarks.torch_peer`, optional), and measures how the
step scales with batch size, width, seeds (``vmap``) and devices. Results are
written as JSON and as a Markdown table; ``docs/benchmarks.md`` describes the
protocol and the numbers.

Modules:

* :mod:`benchmarks.timing` -- the timing protocol (compile timed separately,
  warm-up calls, interleaved repetitions, medians), XLA cost and memory
  analysis, environment record, atomic JSON/Markdown output.
* :mod:`benchmarks.steps` -- the benchmarked models and training steps.
* :mod:`benchmarks.torch_peer` -- the same MLP and the same explicit +
  implicit math in eager PyTorch (double backward).
* :mod:`benchmarks.data_parallel` -- the data-parallel measurement, run in a
  subprocess with four fake CPU devices.
* :mod:`benchmarks.run` -- the command line entry point.
"""

import os as _os

# Passive OpenMP waiting for the optional PyTorch peer; it must be set before
# anything imports torch (see benchmarks.torch_peer).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
