"""mmgraph: multimodal graph recommendation on PyTorch Geometric."""
import os as _os

__version__ = "0.1.0"

# torch's OpenMP threads spin-wait between parallel regions by default; on a CPU that other processes
# also use, every region then waits for a descheduled spinner (measured 20-40x slower LightGCN steps
# on a busy 2-core machine). Sleeping instead costs little on an idle machine. This only takes effect
# when mmgraph is imported before torch (the CLI always is); set OMP_WAIT_POLICY yourself to override.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
