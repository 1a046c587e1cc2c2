"""``python -m predictor``: serve the SSD detector with KServe (see :mod:`predictor.serving.server`)."""

import sys

from predictor.serving.server import main

if __name__ == "__main__":
    sys.exit(main())
