"""The pure core: no I/O, no clocks, no Azure imports. Everything here is a function of its inputs."""
