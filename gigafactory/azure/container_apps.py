"""On-demand factories as Azure Container Apps Job executions (``Launcher`` port).

Each on-demand pool has one Manual-trigger job (infrastructure creates it from the same
``pools.json``); every dispatched attempt starts one execution of it. The start call carries the
full container spec, not just the overrides: an execution template replaces the job's containers
rather than merging with them, so name, image, cpu, memory and the whole environment are sent,
all taken from the pool definition the job was created from.

What a factory is given, and why nothing else:

* The attempt token travels as an environment override of this one execution. It is scoped to a
  single ``(job_id, attempt)``, expires, and is refused for any other attempt, so whoever can read
  the execution's template (only principals with read access on the job) learns a credential for
  one attempt that is probably already running, not for the fleet. Job-level secrets cannot help:
  they belong to the job's configuration, shared by every execution, and changing them per
  attempt would be an update of the job racing concurrent launches.
* No key, connection string or coordinator secret is ever passed. The factory talks only to the
  coordinator's HTTP API, authenticated by that token; it never touches Cosmos DB, Service Bus or
  storage itself, so it has no use for their credentials. A long-lived key in an execution's
  environment would be readable for as long as the execution history is kept and would outlive
  the attempt it was handed out for. The image is pulled with the job's managed identity.

Calls go to Azure Resource Manager with ``DefaultAzureCredential`` (the Function App's managed
identity, which infrastructure grants start, stop and read on these jobs and nothing more).
Errors propagate: the launch handler lets the broker redeliver the dispatch, and a ``404`` on
stop means the execution is already gone, which is what stopping wanted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.appcontainers import ContainerAppsAPIClient
from azure.mgmt.appcontainers.models import (
    ContainerResources,
    EnvironmentVar,
    JobExecutionContainer,
    JobExecutionTemplate,
)

from gigafactory.azure import identity
from gigafactory.domain.job import Job
from gigafactory.domain.pools import Container, PoolSet

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

log = logging.getLogger("gigafactory.container_apps")

SUBSCRIPTION_SETTING = "CONTAINERAPPS_SUBSCRIPTION_ID"
RESOURCE_GROUP_SETTING = "CONTAINERAPPS_RESOURCE_GROUP"
IMAGE_SETTING = "CONTAINERAPPS_IMAGE"
ENDPOINT_SETTING = "CONTAINERAPPS_MANAGEMENT_ENDPOINT"
DEFAULT_MANAGEMENT_ENDPOINT = "https://management.azure.com"

CONTAINER_NAME = "factory"
"""The container name of the jobs' own template (infra/app/containers.bicep)."""

EXECUTION_ENV = "GIGAFACTORY_EXECUTION"


class LaunchTimeout(TimeoutError):
    """ARM accepted the start but did not report the execution in time.

    Raised rather than guessed at, so the broker redelivers: the redelivery finds the job still
    ``launching`` without an execution and starts again; the fence on ``(job_id, attempt)`` lets
    only one factory claim the attempt, and the schedule-to-start timer expires it otherwise.
    """


class ContainerAppsLauncher:
    def __init__(
        self,
        client: ContainerAppsAPIClient,
        resource_group: str,
        pools: PoolSet,
        image_override: str | None = None,
        *,
        start_timeout_seconds: float = 60.0,
        stop_timeout_seconds: float = 30.0,
        polling_interval_seconds: float = 1.0,
    ) -> None:
        # The poll interval is passed on every call because the SDK's default (30 s) would add
        # half a minute to every launch when ARM answers 202 without Retry-After.
        self._client = client
        self._resource_group = resource_group
        self._pools = pools
        self._image_override = image_override or None
        self._start_timeout = start_timeout_seconds
        self._stop_timeout = stop_timeout_seconds
        self._polling_interval = polling_interval_seconds

    @classmethod
    def from_settings(
        cls,
        env: Mapping[str, str],
        pools: PoolSet,
        *,
        credential: TokenCredential | None = None,
        **client_options: Any,
    ) -> ContainerAppsLauncher:
        """``client_options`` go to the SDK client (transport and retry settings, e.g.
        ``connection_verify`` for a private CA or ``retry_total``)."""
        missing = [name for name in (SUBSCRIPTION_SETTING, RESOURCE_GROUP_SETTING) if not env.get(name)]
        if missing:
            raise ValueError(f"Container Apps launcher is not configured: set {', '.join(missing)}")
        if credential is None:
            credential = identity.credential(env)
        client = ContainerAppsAPIClient(
            credential,
            env[SUBSCRIPTION_SETTING],
            base_url=env.get(ENDPOINT_SETTING) or DEFAULT_MANAGEMENT_ENDPOINT,
            **client_options,
        )
        return cls(client, env[RESOURCE_GROUP_SETTING], pools, env.get(IMAGE_SETTING) or None)

    def template(self, job: Job, env: Mapping[str, str]) -> JobExecutionTemplate:
        """The execution template for one attempt: the pool's container with the attempt's env."""
        container = self._container(job)
        variables = {
            **env,
            # The platform names the execution only when the start returns, so the factory is
            # told what launched it; the coordinator records the real name on the job.
            EXECUTION_ENV: f"{container.job_name}:{job.id}:{job.attempt}",
        }
        return JobExecutionTemplate(
            containers=[
                JobExecutionContainer(
                    name=CONTAINER_NAME,
                    image=self._image_override or container.image,
                    env=[EnvironmentVar(name=name, value=value) for name, value in variables.items()],
                    resources=ContainerResources(cpu=container.cpu, memory=container.memory),
                )
            ]
        )

    def start(self, job: Job, env: Mapping[str, str]) -> str:
        """Returns ``<job name>/<execution name>``, what ``stop`` needs to find it again."""
        job_name = self._container(job).job_name
        poller = self._client.jobs.begin_start(
            self._resource_group,
            job_name,
            self.template(job, env),
            polling_interval=self._polling_interval,
        )
        started = time.monotonic()
        poller.wait(self._start_timeout)
        if not poller.done():
            raise LaunchTimeout(
                f"job {job.id} attempt {job.attempt}: Container Apps job {job_name} did not report an "
                f"execution within {self._start_timeout:g} s"
            )
        result = poller.result()
        name = getattr(result, "name", None) or _last_segment(getattr(result, "id", None))
        if not name:
            raise RuntimeError(f"Container Apps job {job_name} started without naming the execution")
        execution = f"{job_name}/{name}"
        log.info(
            "container apps execution started",
            extra={
                "job_id": job.id,
                "attempt": job.attempt,
                "execution": execution,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return execution

    def stop(self, execution: str) -> None:
        """Stopping an execution that no longer exists (404) is success: it has stopped."""
        job_name, sep, execution_name = execution.partition("/")
        if not sep or not job_name or not execution_name:
            # Not one of ours (another launcher's name, or none recorded): nothing to stop here.
            log.warning("not a Container Apps execution name; nothing stopped", extra={"execution": execution})
            return
        try:
            poller = self._client.jobs.begin_stop_execution(
                self._resource_group, job_name, execution_name, polling_interval=self._polling_interval
            )
            poller.wait(self._stop_timeout)
        except ResourceNotFoundError:
            log.info("execution already gone", extra={"execution": execution})
            return
        if not poller.done():
            # ARM accepted the stop; the platform finishes it without us watching.
            log.warning("stop accepted, not yet complete", extra={"execution": execution})
            return
        try:
            poller.result()
        except ResourceNotFoundError:
            log.info("execution already gone", extra={"execution": execution})

    def _container(self, job: Job) -> Container:
        container = self._pools.get(job.pool).container
        if container is None:
            raise ValueError(f"pool {job.pool} has no container: only on-demand pools are launched")
        return container


def _last_segment(resource_id: str | None) -> str | None:
    return resource_id.rstrip("/").rsplit("/", 1)[-1] if resource_id else None
