"""The factory side: the runner that executes one attempt (and, for standing pools, the serve loop)."""
