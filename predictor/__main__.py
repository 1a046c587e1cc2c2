"""``python -m predictor``: serve the SSD detector with KServe (see :mod:`predictor.server`)."""

import sys

from predictor.server import main

if __name__ == "__main__":
    sys.exit(main())
