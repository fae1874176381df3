"""Shared core of every Parley service: config, errors, auth, validation, the
gRPC host (health, reflection, metrics, shutdown) and storage connections.

Only modules under ``parley_core.storage`` import pymongo or redis.
"""
