"""mmgraph: multimodal graph recommendation on PyTorch Geometric."""
import os as _os

__version__ = "0.1.0"

# torch's OpenMP threads (libgomp) spin-wait between parallel regions for ~300k iterations by default; on a
# CPU that other processes also use, every region then waits for a descheduled spinner (measured 10-40x
# slower LightGCN steps on a busy 2-core machine). Sleeping at once (OMP_WAIT_POLICY=PASSIVE) fixes that but
# costs ~15-20 % on an idle machine (CM3 on TikTok: 2.44 vs 2.09 s of training per epoch). A short spin
# (GOMP_SPINCOUNT=10000) keeps both: idle-machine speed within noise of the default, busy-machine speed as
# PASSIVE. This only takes effect when mmgraph is imported before torch (the CLI always is); set
# OMP_WAIT_POLICY or GOMP_SPINCOUNT yourself to override.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "10000"
