"""The gRPC wire contract's mapping, shared by the server (`keel.api.grpc`) and the client
adapter (`keel.remote`): domain objects and errors to and from Protocol Buffers messages."""
