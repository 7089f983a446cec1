"""``python -m multibox``: the command line (and what ``torchrun -m multibox train ...`` starts)."""

from .cli import main

main()
