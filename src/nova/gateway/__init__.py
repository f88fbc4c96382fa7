"""The WebSocket edge (/ws)."""
