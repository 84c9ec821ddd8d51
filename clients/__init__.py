"""Flower NumPyClients: thin adapters that move payloads and call the core."""
