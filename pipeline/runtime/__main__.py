"""`python -m pipeline.runtime status | stop`: the warm servers of this user."""

from pipeline.runtime.server import main

main()
