"""``python -m bridge`` is the same as the ``mailjet-bridge`` console script."""

from .cli import main

main()
