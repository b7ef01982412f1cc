"""``python -m bridge`` is the same as the ``mailjet-bridge`` console script."""

from bridge.cli import main

main()
