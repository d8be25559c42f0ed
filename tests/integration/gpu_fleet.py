"""A two-pool set for the Azure adapter tests: an on-demand `gpu` pool with a container job and
a standing `fleet` pool."""

from __future__ import annotations

from gigafactory.domain.pools import Pool, PoolSet

ECHO = {"echo": {"argv": ["echo", "{task}"]}}


def gpu_fleet_pools(*, cpu: float, memory: str) -> PoolSet:
    return PoolSet(pools=[
        Pool.model_validate({
            "name": "gpu", "capabilities": ["linux", "gpu"], "launch_mode": "on-demand", "max_parallel": 2,
            "profiles": ECHO,
            "container": {"job_name": "factory-gpu", "image": "example.azurecr.io/factory:1.2.3", "cpu": cpu,
                          "memory": memory, "replica_timeout_seconds": 3600},
        }),
        Pool.model_validate({"name": "fleet", "capabilities": ["linux"], "launch_mode": "standing",
                             "max_parallel": 8, "profiles": ECHO}),
    ])
