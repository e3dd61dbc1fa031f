"""`python -m afinar.cli ...` (what `accelerate launch -m afinar.cli train RECIPE` runs)."""

from afinar.cli import main

main()
