"""Settings shared by the benchmarks."""

import os

# The torch profiler (peak CPU memory, ``test_fused_ops.peak_extra_memory``) logs "USDT: profiler_start"
# and "profiler_stop" lines on stderr at its default level, between the rows of our tables. Level 6
# is above every message kind; it is read when the profiler first starts, so it is set here.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")
