"""One servicer per gRPC service, each a thin translation onto the core and features."""
