"""``python -m launch.bench``: the latency report (``launch/bench/latency.py``)."""

import sys

from launch.bench.latency import main

sys.exit(main())
