"""Running the processes together: start-up, process groups and RPC (``dist.py``), the
server-side coordinator of every run (``coordinator.py``: metrics sink, progress, checkpoints
on request, completion, dropped clients) and the liveness watchdog (``watchdog.py``)."""
