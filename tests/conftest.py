"""Test-wide JAX settings.

Four fake CPU devices let the tests exercise the sharded (multi-device) code
paths on a machine without accelerators. This must run before JAX initialises
its backends, which is why it lives in conftest.py.
"""
import jax

jax.config.update("jax_num_cpu_devices", 4)
