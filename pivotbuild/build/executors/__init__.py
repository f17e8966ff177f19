"""Executors: how an admitted stage is run and its result reported."""
