"""`python -m probekit ...` (also what `torchrun -m probekit extract ...` runs)."""

from probekit_cli.main import main

main()
