"""Protecting Keel and what it depends on: circuit breakers, adaptive concurrency limits and
load shedding by priority."""
