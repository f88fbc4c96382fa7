"""Nova: self-hosted messaging and WebRTC call-signaling backend."""

__version__ = "0.1.0"
