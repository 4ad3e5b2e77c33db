"""Thin asyncio adapters between sockets and the sans-I/O core."""
