"""What the runner containers of a job's pods reported in their termination messages: a step's result
(the pinned inputs, the metrics summary) or its error. Pure: the pods come from ``observe``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from assay import protocol
from assay_operator import manifests, status


def _terminations(pods: list[dict[str, Any]], role: str) -> list[tuple[str, dict[str, Any]]]:
    """(finishedAt, terminated state) of the runner containers of ``role``'s pods, newest first."""
    out = []
    for pod in pods:
        if status._role(pod) != role:
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if cs.get("name") == manifests.CONTAINER and term:
                out.append((term.get("finishedAt") or "", term))
    return sorted(out, key=lambda t: t[0], reverse=True)


def report(pods: list[dict[str, Any]], role: str, model: type[BaseModel]) -> dict[str, Any] | None:
    """The result that ``role``'s pod which succeeded reported in its termination message."""
    for _, term in _terminations(pods, role):
        if term.get("exitCode") == 0:
            result = protocol.parse_result(term.get("message"), model)
            if result is not None:
                return result.model_dump(mode="json", by_alias=True, exclude_none=True)
    return None


def error_message(pods: list[dict[str, Any]], role: str) -> str | None:
    """The error (and hint) a failed pod of ``role`` reported in its termination message; for a pod that died
    before it could report (a crash of the interpreter), the last line of the log tail the kubelet put
    there instead (terminationMessagePolicy FallbackToLogsOnError)."""
    for _, term in _terminations(pods, role):
        text = (term.get("message") or "").strip()
        if not term.get("exitCode") or not text:
            continue
        failure = protocol.parse_failure(text)
        if failure is not None:
            return failure.error + (f" (hint: {failure.hint})" if failure.hint else "")
        return text.splitlines()[-1].strip()
    return None
