"""`python -m probekit ...` (also what `torchrun -m probekit extract ...` runs)."""

from cli.main import main

main()
