"""The gRPC wire contract, shared by the server and the client: the generated code (`v1`,
from `contracts/proto/`) and domain objects and errors to and from its messages."""
