"""Builders. Modules here that run inside the sandbox use only the standard library:
the sandbox runs them with the host's Debian /usr/bin/python3, without the planner's deps."""
