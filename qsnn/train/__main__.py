"""``python -m qsnn.train`` (and ``torchrun --nproc_per_node N -m qsnn.train``)."""

import sys

from qsnn.train.options import main

sys.exit(main())
