"""The non-HTTP functions, registered on one Durable blueprint. Wiring only."""

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

from gigafactory import lifecycle, messages
from gigafactory.azure import handlers

bp = df.Blueprint()

# Change feed of the jobs container = the outbox. The checkpoint advances even when a batch
# fails; the retry policy is best effort and the sweeper is the backstop.
RELAY_POLL_MS = 1000


@bp.function_name("relay_job_changes")
@bp.retry(strategy="exponential_backoff", max_retry_count="5", minimum_interval="00:00:02",
          maximum_interval="00:01:00")
@bp.cosmos_db_trigger(arg_name="documents", connection="COSMOS", database_name="%COSMOS_DATABASE%",
                      container_name="jobs", lease_container_name="leases",
                      create_lease_container_if_not_exists=False, feed_poll_delay=RELAY_POLL_MS)
@bp.durable_client_input(client_name="client")
async def relay_job_changes(documents: func.DocumentList, client: df.DurableOrchestrationClient) -> None:
    await handlers.relay_changes(documents, client)


@bp.function_name("launch_dispatch")
@bp.service_bus_topic_trigger(arg_name="message", connection="SERVICEBUS", topic_name=messages.DISPATCH_TOPIC,
                              subscription_name=messages.LAUNCHER_SUBSCRIPTION)
def launch_dispatch(message: func.ServiceBusMessage) -> None:
    handlers.launch_dispatch(message)


@bp.function_name("submit_from_queue")
@bp.service_bus_queue_trigger(arg_name="message", connection="SERVICEBUS", queue_name=messages.REQUESTS_QUEUE)
def submit_from_queue(message: func.ServiceBusMessage) -> None:
    handlers.submit_from_queue(message)


@bp.function_name("submit_from_event_grid")
@bp.event_grid_trigger(arg_name="event")
def submit_from_event_grid(event: func.EventGridEvent) -> None:
    handlers.submit_from_event_grid(event)


@bp.function_name("sweep")
@bp.timer_trigger(arg_name="timer", schedule="0 */5 * * * *", run_on_startup=False)
@bp.durable_client_input(client_name="client")
async def sweep(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    await handlers.sweep(timer, client)


@bp.function_name("shadow_compare")
@bp.timer_trigger(arg_name="timer", schedule="0 * * * * *", run_on_startup=False)
def shadow_compare(timer: func.TimerRequest) -> None:
    handlers.shadow_compare(timer)


bp.orchestration_trigger(context_name="context", orchestration=lifecycle.ORCHESTRATOR)(lifecycle.job_lifecycle)
for _name, _activity in lifecycle.ACTIVITIES.items():
    bp.activity_trigger(input_name="payload", activity=_name)(_activity)
