"""Allow ``python -m continuity``."""

from continuity.cli import main

main()
