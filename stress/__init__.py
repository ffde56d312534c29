"""Stress runs against real servers: ``python -m stress.consistency --help``."""
