"""The transports: thin Tornado handlers over ``chatapp.chat.Chat``."""
