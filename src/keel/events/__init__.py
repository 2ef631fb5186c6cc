"""Adapters of the event bus port (`keel.service.ports.EventPublisher`): NATS JetStream."""
