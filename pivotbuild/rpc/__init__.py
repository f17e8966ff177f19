"""The agent server: JSON-RPC 2.0 over a Unix socket beside watch mode (CLI.md, "The agent server")."""
