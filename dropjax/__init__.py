"""dropjax: dropout and its analytic replacements as pure JAX functions.

The one contract: a model is ``apply(params, x, sites)`` and calls
``h = sites(name, h)`` at every dropout site. Stochastic dropout, the explicit
and implicit regularizers of Wei, Kakade & Ma (ICML 2020), targeted dropout and
weight penalties are different choices of ``sites`` / objective around the
same model. See ``dropjax.sites`` for the contract and ``dropjax.objectives``
for one objective per regimen.
"""

from dropjax import attention
from dropjax import explicit
from dropjax import flax
from dropjax import implicit
from dropjax import losses
from dropjax import objectives
from dropjax import schedules
from dropjax import selection
from dropjax import sites
from dropjax import tree
from dropjax.dropout import check_rate
from dropjax.dropout import dropout
from dropjax.dropout import dropout_mask
from dropjax.dropout import gaussian_dropout
from dropjax.dropout import targeted_unit_candidates
from dropjax.dropout import targeted_unit_dropout
from dropjax.dropout import targeted_weight_candidates
from dropjax.dropout import targeted_weight_dropout
from dropjax.explicit import ESTIMATORS
from dropjax.explicit import explicit_regularizer
from dropjax.implicit import implicit_regularizer
from dropjax.losses import LOSSES
from dropjax.objectives import REGIMENS
from dropjax.objectives import make_objective
from dropjax.selection import kth_smallest
from dropjax.sites import Apply
from dropjax.sites import Sites
from dropjax.sites import dropout_sites
from dropjax.sites import identity_sites
from dropjax.sites import linearize_sites
from dropjax.sites import perturbation_sites
from dropjax.sites import resolve_rates
from dropjax.sites import site_shapes

__version__ = "0.1.0"

__all__ = [
  "Apply",
  "ESTIMATORS",
  "LOSSES",
  "REGIMENS",
  "Sites",
  "attention",
  "check_rate",
  "dropout",
  "dropout_mask",
  "dropout_sites",
  "explicit",
  "explicit_regularizer",
  "flax",
  "gaussian_dropout",
  "identity_sites",
  "implicit",
  "implicit_regularizer",
  "kth_smallest",
  "linearize_sites",
  "losses",
  "make_objective",
  "objectives",
  "perturbation_sites",
  "resolve_rates",
  "selection",
  "site_shapes",
  "schedules",
  "sites",
  "targeted_unit_candidates",
  "targeted_unit_dropout",
  "targeted_weight_candidates",
  "targeted_weight_dropout",
  "tree",
]
