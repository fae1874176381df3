"""gRPC transport of svc_keys: validate, call the domain, convert."""
