"""MongoDB collections of svc_search: postings and per-message records."""
