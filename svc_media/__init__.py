"""svc_media: end-to-end encrypted attachments on S3-compatible storage."""
