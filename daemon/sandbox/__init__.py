"""The stand-in Pivotal API (being written)."""
