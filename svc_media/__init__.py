"""svc_media: media uploads and downloads on S3-compatible storage. Not built yet."""
