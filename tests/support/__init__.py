"""Helpers shared by the test suite: real servers started by the test run."""
