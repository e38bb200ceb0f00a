"""`python -m msgvip` (and `torchrun -m msgvip`) run the CLI."""

from .cli import main

main()
