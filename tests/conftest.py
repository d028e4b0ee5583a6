import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# One torch/BLAS thread per process (children inherit it): the tests' tensors are small, and on a 2-core
# machine shared with other work, spinning intra-op threads made the suite 2-3x slower, not faster.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# No test reaches the network by accident (a repo id the cache lacks is read from the Hub): fancli is offline
# unless a test that starts its own server on 127.0.0.1 sets FANCLI_OFFLINE to "" itself.
os.environ["FANCLI_OFFLINE"] = "1"
