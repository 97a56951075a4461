"""`python -m ee_vla.evaluation`: the same as `ee-vla eval`."""

from ee_vla.evaluation import main

main()
