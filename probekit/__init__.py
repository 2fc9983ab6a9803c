"""probekit: goal-conditioned reward probes on frozen language models.

Extract a frozen LM's hidden states once (`probekit.extract`), fit small
reward/representation probes on the cache (`probekit.probe`), and filter
sampled solutions by Q-value (`probekit.filtering`).
"""

__version__ = "0.1.0"
