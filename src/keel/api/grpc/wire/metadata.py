"""The metadata keys of Keel's gRPC calls besides `authorization` (shared by server and edge)."""

# Sent by an edge with its own `edge` key: the call runs as this key's owner, who presented a
# token with this SHA-256 to the edge (the proof; the token itself never leaves the edge).
ON_BEHALF_OF = "keel-on-behalf-of"
ON_BEHALF_OF_SHA256 = "keel-on-behalf-of-sha256"
# Sent by an edge on every call: a failure of the edge's own key is then reported as such
# (EDGE_REJECTED), not as the caller's key being invalid.
EDGE = "keel-edge"
REQUEST_ID = "x-request-id"
# Read-your-writes across read replicas (keel.service.consistency): sent by a client with the
# token of its last write; answered in the trailing metadata of a call that wrote.
CONSISTENCY_TOKEN = "keel-consistency-token"  # noqa: S105 - a key name, not a secret
