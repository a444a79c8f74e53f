"""Measurements on trained parameters: pruning, sparsity, clusterability, and
how well the analytic replacement describes dropout (diagnostics).

Nothing in this package trains, except that :mod:`dropjax.analysis.gradual`
provides the pieces a training loop needs for gradual magnitude pruning (a
schedule, a masked optimizer and a per-step mask hook). Kernels are the
parameter leaves with ``ndim >= 2`` (:func:`dropjax.tree.is_kernel`), viewed
as ``(fan_in, n_out)``, in pytree flatten order; see
:mod:`dropjax.analysis.pruning` for the shared conventions and
``docs/analysis.md`` for the definitions and protocols.
"""

from dropjax.analysis.clusterability import (
  SHUFFLE_METHODS,
  ClusterabilityResult,
  as_weight_list,
  clusterability,
  ncut,
  remove_isolated_nodes,
  shuffle_weights,
  spectral_cluster,
  weight_graph,
)
from dropjax.analysis.diagnostics import (
  dropout_gap,
  gradient_noise_check,
  taylor_check,
)
from dropjax.analysis.gradual import (
  MaskedOptState,
  PruningSchedule,
  last_update_step,
  masked_optimizer,
  pruning_hook,
)
from dropjax.analysis.pruning import (
  DEFAULT_EXCLUDE,
  DEFAULT_FRACTIONS,
  GRANULARITIES,
  PruneCurve,
  apply_masks,
  is_kernel,
  is_mask_update_step,
  kernel_list,
  layerwise_magnitude_masks,
  magnitude_prune,
  path_string,
  polynomial_sparsity,
  prune_count,
  prune_curve,
)
from dropjax.analysis.sparsity import (
  compressed_bits_per_weight,
  dead_unit_fraction,
  epsilon_sparsity,
  exact_sparsity,
  gini_index,
  hoyer_sparsity,
  sparsity_report,
  symmetric_quantize,
)

__all__ = [
  "ClusterabilityResult",
  "DEFAULT_EXCLUDE",
  "DEFAULT_FRACTIONS",
  "GRANULARITIES",
  "MaskedOptState",
  "PruneCurve",
  "PruningSchedule",
  "SHUFFLE_METHODS",
  "apply_masks",
  "as_weight_list",
  "clusterability",
  "compressed_bits_per_weight",
  "dead_unit_fraction",
  "dropout_gap",
  "epsilon_sparsity",
  "exact_sparsity",
  "gini_index",
  "gradient_noise_check",
  "hoyer_sparsity",
  "is_kernel",
  "is_mask_update_step",
  "kernel_list",
  "last_update_step",
  "layerwise_magnitude_masks",
  "magnitude_prune",
  "masked_optimizer",
  "ncut",
  "path_string",
  "polynomial_sparsity",
  "prune_count",
  "prune_curve",
  "pruning_hook",
  "remove_isolated_nodes",
  "shuffle_weights",
  "sparsity_report",
  "spectral_cluster",
  "symmetric_quantize",
  "taylor_check",
  "weight_graph",
]
