"""Connections to MongoDB and Redis: the only core modules that import their drivers."""
