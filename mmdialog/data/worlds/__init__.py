"""Procedural worlds: seeded generators whose every answer is known (see shapes/)."""
