"""`probekit serve`: an HTTP reward server over `probekit.reward.RewardProbe` (OpenRLHF's remote reward-model
protocol and a plain JSON endpoint), batching concurrent requests into one forward."""
