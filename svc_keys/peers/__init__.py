"""Other services and stores as svc_keys' erasure job reaches them."""
