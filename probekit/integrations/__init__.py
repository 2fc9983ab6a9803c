"""Adapters to other people's trainers: `probekit.integrations.trl.reward_function` (TRL's `reward_funcs`)."""
