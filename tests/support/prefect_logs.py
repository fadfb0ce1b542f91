"""What flow runs sent to the Prefect server (what its UI shows), read back once the log queue is drained."""

from __future__ import annotations

from datetime import datetime


def logged(state=None, after: datetime | None = None, before: datetime | None = None) -> list[str]:
    """The messages of the flow run whose final ``state`` is given (not those of its subflows), or of every run
    between ``after`` and ``before``, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    if state is not None:
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    else:
        log_filter = LogFilter(timestamp=LogFilterTimestamp(after_=after, before_=before))
    messages: list[str] = []
    with get_client(sync_client=True) as client:
        while page := client.read_logs(log_filter=log_filter, offset=len(messages)):  # the server pages its answer
            messages += [log.message for log in page]
    return messages
