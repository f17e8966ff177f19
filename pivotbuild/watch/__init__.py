"""Watch mode: the loop, where changes come from, what it shows, and the agent it serves (docs/watch.md)."""
