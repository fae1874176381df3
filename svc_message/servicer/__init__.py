"""gRPC transport of svc_message: validate, call the domain, convert."""
