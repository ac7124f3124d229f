"""The gRPC edge: one servicer per service, status mapping, conversions, the server."""
