"""Thin gRPC adapters: validate, bind log context, call the manager, convert."""
