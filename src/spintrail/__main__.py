"""``python -m spintrail`` runs the command line."""

from spintrail.cli import main

main()
