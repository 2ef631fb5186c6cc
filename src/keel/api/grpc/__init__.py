"""The internal gRPC API (`keel.profiles.v1`), served by `grpc.aio` beside or instead of HTTP."""
