"""svc_search: the opt-in server blind index over end-to-end encrypted history."""
