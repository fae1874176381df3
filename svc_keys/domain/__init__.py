"""Account and device policy of svc_keys."""
