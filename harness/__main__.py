"""``python -m harness`` is the ``rnnbench`` command."""
import sys

from harness.cli import main

sys.exit(main())
