"""svc_keys: accounts, devices and device tokens (the E2EE key directory joins later).

Layers: ``servicer`` (gRPC transport) -> ``domain`` (policy) -> ``storage``
(MongoDB) -> ``model`` (plain data). ``app`` is the composition root.
"""
