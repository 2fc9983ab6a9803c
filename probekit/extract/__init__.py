"""`probekit extract`: run a frozen causal LM once over trajectories and cache completion-token states."""
