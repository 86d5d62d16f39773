"""``python -m tidegauge``: the same as the ``tidegauge`` command."""

from tidegauge.cli import main

main()
