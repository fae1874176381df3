"""Clients of the peer regions' svc_presence."""
