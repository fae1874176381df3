"""Other Parley services svc_message calls over gRPC."""
