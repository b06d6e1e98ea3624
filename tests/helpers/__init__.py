"""Test helpers: tiny real models, their configs and step contexts (see models.py)."""
