"""``python -m duolib COMMAND ...`` = ``duo COMMAND ...``; also under torchrun:
``torchrun --nproc_per_node N -m duolib train ...``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
