"""`python -m planner`: the `planner` command, where its console script is not on PATH."""

from planner.cli import main

main()
