"""parley.search.v1 over gRPC: validation and conversion only."""
