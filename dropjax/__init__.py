"""dropjax: dropout and its analytic replacements as pure JAX functions."""

__version__ = "0.1.0"
