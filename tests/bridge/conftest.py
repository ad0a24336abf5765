"""Fixtures of the bridge tests: the cluster fixtures live in tests/conftest.py."""
