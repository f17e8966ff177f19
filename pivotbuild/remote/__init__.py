"""Remotes: where cache objects and run-cache entries go to be shared."""
