"""``python -m hyperret.cli``: the command line."""

from . import main

main()
