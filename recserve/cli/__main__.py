"""`python -m recserve.cli ...`: the same as the `recserve` command."""

from recserve.cli.main import main

main()
