"""Use cases: accounts, conversations, messages, realtime events, presence, calls."""
