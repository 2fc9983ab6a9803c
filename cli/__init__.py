"""The `probekit` command-line interface (Typer)."""
