"""``python -m trackgate`` runs the command line."""

from trackgate.cli import main

main()
