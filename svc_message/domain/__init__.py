"""Conversation, message and delivery policy of svc_message."""
