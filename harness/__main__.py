"""``python -m harness`` is the ``rnnbench`` command."""
import sys

from harness.cli.main import main

sys.exit(main())
