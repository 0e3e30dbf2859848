"""The write step of a reconcile: perform ``plan``'s actions on the child Jobs through ``kube``, in order.

A create the API server refuses stops the rest (the caller decides whether the job waits or fails); a
Job of the child's name with another owner counts as refused (409, ``plan.name_conflict``). Every action
is safe to repeat: creates are create-if-absent, deletes carry the uid they mean. A Job as a create or
patch left it goes into ``cache`` at once (its watch event comes later), so the next reconcile does not
act again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from assay_operator import cache, kube, manifests, plan
from assay_operator.plan import Action, Create, Delete, Patch

Done = list[tuple[Action, dict[str, Any] | None]]


def perform(namespace: str, actions: Iterable[Action], logger: logging.Logger) -> tuple[Done, tuple[int, str] | None]:
    """(each action done with the object it left: the Job created or patched, None for a delete;
    the refusal (status, message) that stopped the rest, if any)."""
    done: Done = []
    for action in actions:
        try:
            result = _perform(namespace, action, logger)
        except kube.Refused as exc:
            return done, (exc.status, str(exc))
        if result is not None:
            cache.put(cache.JOBS, result)
        done.append((action, result))
    return done, None


def _perform(namespace: str, action: Action, logger: logging.Logger) -> dict[str, Any] | None:
    if isinstance(action, Create):
        return _create(namespace, action.body, logger)
    if isinstance(action, Patch):
        logger.info("%s Job %s%s", action.verb, action.name, f": {action.detail}" if action.detail else "")
        return kube.patch_job(namespace, action.name, action.patch)
    assert isinstance(action, Delete)
    (logger.warning if action.warning else logger.info)("deleting Job %s: %s", action.name, action.note)
    kube.delete_job(namespace, action.name, action.uid)
    return None


def _create(namespace: str, child: dict[str, Any], logger: logging.Logger) -> dict[str, Any]:
    created, new = kube.create_job(namespace, child)
    if new:
        logger.info("created Job %s", child["metadata"]["name"])
    elif manifests.controller_uid(created) != manifests.controller_uid(child):
        # the cache holds only Jobs of our label, so a foreign namesake shows itself only here
        raise kube.Refused(409, plan.name_conflict(child["metadata"]["name"], created))
    return created
