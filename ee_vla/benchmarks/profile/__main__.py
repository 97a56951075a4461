"""`python -m ee_vla.benchmarks.profile`: the engine profiler's command line."""

import sys

from ee_vla.benchmarks.profile import main

sys.exit(main())
