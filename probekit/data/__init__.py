"""Trajectory and pair formats, and adapters that write them (see data/README.md)."""
