"""``python -m mmgraph ...`` (and ``torchrun -m mmgraph ...``): the same entry point as the ``mmgraph`` command."""
import sys

from mmgraph.cli.main import main

sys.exit(main())
