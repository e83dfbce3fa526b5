"""``python -m chatkit``: the ``chatkit`` command."""

import sys

from chatkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
