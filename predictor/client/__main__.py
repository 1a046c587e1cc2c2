"""``python -m predictor.client``: the same as the ``ssd-detect`` command."""

import sys

from predictor.client.cli import main

if __name__ == "__main__":
    sys.exit(main())
