"""Baseline servers speaking the Realtime subset of PROTOCOL.md (or Socket.IO for ``c``).

Each is one small file, started as ``python -m bench.baselines.<name> --port P``:

- ``ws_broadcast``: websockets, in-memory only (the Python ceiling);
- ``ws_sqlite``: the same, with durable SQLite inserts before the broadcast (batched commits);
- ``socketio_room``: python-socketio room broadcast on aiohttp.
"""
