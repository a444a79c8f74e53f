"""Measurements on trained parameters: pruning, sparsity, clusterability.

Nothing in this package trains. Kernels are the parameter leaves with
``ndim >= 2``, viewed as ``(fan_in, n_out)``, in pytree flatten order; see
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
    "ClusterabilityResult", "DEFAULT_EXCLUDE", "DEFAULT_FRACTIONS",
    "GRANULARITIES", "PruneCurve", "SHUFFLE_METHODS", "apply_masks",
    "as_weight_list", "clusterability", "compressed_bits_per_weight",
    "dead_unit_fraction", "epsilon_sparsity", "exact_sparsity", "gini_index",
    "hoyer_sparsity", "is_kernel", "is_mask_update_step", "kernel_list",
    "layerwise_magnitude_masks", "magnitude_prune", "ncut",
    "path_string", "polynomial_sparsity", "prune_count", "prune_curve",
    "remove_isolated_nodes", "shuffle_weights", "sparsity_report",
    "spectral_cluster", "symmetric_quantize", "weight_graph",
]
