"""Storage of svc_message: the only modules here that import pymongo or redis."""
