"""svc_message: conversations, messages, watermarks and the delivery stream.

Layers: ``servicer`` (gRPC transport) -> ``domain`` (policy, group commit,
delivery) -> ``storage`` (MongoDB, Redis) and ``peers`` (other services over
gRPC) -> ``model`` (plain data). ``app`` is the composition root.
"""
