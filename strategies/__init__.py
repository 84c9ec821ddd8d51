"""Flower strategies: thin adapters that move payloads, call the core and record metrics."""
