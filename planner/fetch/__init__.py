"""Fetchers: bytes from URLs, git, PyPI and apt, each checked, hashed and moved into place atomically."""
