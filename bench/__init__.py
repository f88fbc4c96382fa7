"""Nova benchmarks: a load generator, tiny baseline servers and a report writer.

One command runs a scenario against a target (``python -m bench.run``); the load generator
(``bench.loadgen``) runs in its own process, pinned to another core than the server.
"""
