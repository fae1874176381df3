"""svc_search: search over end-to-end encrypted history (blind index). Not built yet."""
