"""Embedded adapters: the same ports as ``gigafactory.azure``, on SQLite and local processes."""
