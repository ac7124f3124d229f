"""computesdkd: a gRPC daemon that creates, runs, watches and cleans up sandboxes."""

__version__ = "0.1.0"
