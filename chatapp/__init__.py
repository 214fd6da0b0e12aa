"""chatapp: real-time chat on Tornado, over WebSocket and long-polling, with history in MongoDB."""

__version__ = "0.1.0"
