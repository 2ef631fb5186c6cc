"""Adapters for the webhook ports: the HTTP sender (httpx), the secret box (AES-GCM) and the
address resolver."""
