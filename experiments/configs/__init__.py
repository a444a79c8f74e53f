"""Experiment configs: one file per experiment, ``get_config(variant)``."""

from typing import Callable, Mapping


def select_variant(variants: Mapping[str, Callable], variant: str):
  """``variants[variant]()``, the config of one variant.

  Raises:
    ValueError: an unknown variant (the message lists the valid ones).
  """
  if variant not in variants:
    raise ValueError(
      f"unknown config variant {variant!r}; valid: {', '.join(variants)}."
    )
  return variants[variant]()
