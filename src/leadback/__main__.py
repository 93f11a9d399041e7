"""``python -m leadback`` is the ``leadback`` command."""

from leadback.cli import main

main()
