"""The gRPC host every service runs in."""
