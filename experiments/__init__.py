"""Experiments built on dropjax (never imported by the library)."""
