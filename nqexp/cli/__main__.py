"""`python -m nqexp.cli ...` is the `nqexp` console script."""

from nqexp.cli import main

main()
