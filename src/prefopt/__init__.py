"""prefopt: align language models from comparisons and rankings."""

import os
import sys

__version__ = "0.1.0"

# PyTorch's CPU allocator puts tensors of 2 MiB and more on transparent huge pages with this set,
# and reads it once, at its first allocation: so here, before torch is imported. With the heap
# that training keeps between steps (prefopt.engine.hostmem) it lowers a run's peak resident
# memory at the same speed (docs/performance.md). A value already in the environment is kept.
if "torch" not in sys.modules:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
