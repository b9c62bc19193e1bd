"""Proof that a demo node builds inside the demo base root filesystem (see setup.py)."""
