"""Shared core: settings, the Redis key contract, the record store, telemetry.

Services (ingest, api, bridge) build on this package; it builds on the
protocol package and nothing else of ours.
"""
