"""The content-addressed cache and the run cache."""
