"""The gRPC server of a core: servicers, admission, the interceptor (the shared request envelope)
and answers joined from encoded profiles."""

from .grpc_server import GrpcServer

__all__ = ["GrpcServer"]
