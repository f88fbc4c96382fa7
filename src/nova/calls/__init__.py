"""Calls: signaling state and TURN REST credentials. No web framework, database or broker here."""
