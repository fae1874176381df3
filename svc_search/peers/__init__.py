"""Other services as svc_search sees them."""
