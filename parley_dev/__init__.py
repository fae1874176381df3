"""Developer tooling: the local stack behind ``parley up`` and the test suite."""
