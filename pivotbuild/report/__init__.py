"""Reporters: views of the event stream (plain lines, a live terminal display, JSON lines)."""
