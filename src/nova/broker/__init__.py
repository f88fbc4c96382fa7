"""Broker engines: in-process and Redis pub/sub, and the rate-limit token buckets."""
