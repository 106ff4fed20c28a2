"""``python -m meterline`` runs the CLI."""

from meterline.cli import main

main()
