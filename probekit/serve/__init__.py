"""`probekit serve`: an HTTP reward server over `probekit.reward.RewardProbe` (OpenRLHF's remote reward-model
protocol and a plain JSON endpoint), batching concurrent requests into one forward.

options.py (importable without torch or FastAPI: the CLI's options, the bind rule), protocol.py (request checks and
answers), batcher.py (the queue and the one worker thread), scoring.py (a batch as one `RewardProbe.score` call),
app.py (the FastAPI app), server.py (the socket, uvicorn, SIGTERM).
"""
