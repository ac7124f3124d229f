"""The domain: what a sandbox, a process and an error are. Standard library only."""
