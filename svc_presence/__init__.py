"""svc_presence: online/offline, last seen, privacy and typing. Not built yet."""
