"""gRPC, the internal API between an edge and a core, in three parts: `wire` (the generated
code of `contracts/proto/keel/profiles/v1/profiles.proto` and the mapping of domain objects and errors to
and from its messages), `server` (what a core serves) and `client` (the service port over gRPC,
which an edge runs on)."""
