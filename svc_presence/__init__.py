"""svc_presence: online/offline, last seen, privacy settings and contact lists.

Layers: ``servicer`` (gRPC transport) -> ``domain`` (policy; the privacy rules
are pure functions in ``domain.privacy``) -> ``storage`` (MongoDB, Redis) ->
``model`` (plain data). ``app`` is the composition root.
"""
