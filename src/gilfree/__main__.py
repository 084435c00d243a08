"""``python -m gilfree``: the same as the ``gilfree`` command."""

import sys

from gilfree.cli import main

if __name__ == "__main__":
    sys.exit(main())
