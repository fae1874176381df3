"""Device tokens: issuing, verifying, revocation, and the caller of an RPC."""
