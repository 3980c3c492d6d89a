"""`python -m rnnctl ...` (and `torchrun ... -m rnnctl train CONFIG`): the same as the `rnnctl` command."""

from rnnctl.cli import main

main()
