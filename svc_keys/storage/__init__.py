"""MongoDB storage of svc_keys: the only modules here that import pymongo."""
