"""Brokers: the doorbell and the ephemeral channel between replicas (memory or Redis)."""
