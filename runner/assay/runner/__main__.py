"""Pod entrypoint: ``python -m assay.runner resolve|ppl|cmp``.

The context comes from the environment the operator sets (``RunContext.ENV``; a ppl pod's work item is
Kubernetes' JOB_COMPLETION_INDEX). Exit codes: 0 done; EXIT_PERMANENT (3) for deterministic errors
(bad spec, handler, corrupt data) so the Job fails at once; EXIT_RETRYABLE (1) for everything else.

Pods report to the operator only through their termination message (the operator never reads the
store): ``resolve`` writes the pinned inputs, ``cmp`` a bounded metrics summary, and a failing step its
error and hint. Kubernetes keeps at most 4096 bytes of it.

``ppl`` runs the model's handler, user code, in a child process that leads its own process group, as
``assay run`` runs its workers: a handler that ends the process with code 0 (``os._exit(0)``) before the
work is done fails the step (exit 3) instead of passing for a finished index, and what the handler
started ends with the step.
"""

from __future__ import annotations

import os
import signal
import sys

from assay.errors import Stopped

#: The signals a pod is stopped with (the kubelet's SIGTERM) or a run by hand (Ctrl-C, a closed terminal).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_step_group = 0  # the ppl step's process group, once forked


def _on_stop(signum: int, _frame: object) -> None:
    """A pod's main process is PID 1 of its container, and the kernel drops a signal PID 1 has no handler
    for: without this, SIGTERM did nothing and every deletion or Kueue preemption of a resolve or cmp pod
    waited out the whole grace period for the SIGKILL. Installed before anything slow is imported."""
    if _step_group:
        groups.signal_group(_step_group, signum)  # the ppl step ends its own way (exit code 128 + signum)
    else:
        raise Stopped(signum)  # unwinds the step: its finally blocks remove what it half-wrote


if __name__ == "__main__":  # not when a test imports this module
    for _signum in STOP_SIGNALS:
        signal.signal(_signum, _on_stop)

import logging  # noqa: E402 - after the handlers: importing pydantic and torch takes seconds

from pydantic import BaseModel  # noqa: E402

from assay import logs, protocol  # noqa: E402
from assay.errors import EXIT_RETRYABLE, AssayError  # noqa: E402
from assay.logs import setup_logging  # noqa: E402
from assay.runner import groups  # noqa: E402
from assay.spec import RunContext  # noqa: E402


def write_termination_message(text: str) -> None:
    """Into ASSAY_TERMINATION_LOG when set (the operator sets it), else into the kubelet's file if this
    runs in a pod; a run by hand never creates /dev/termination-log."""
    path = os.environ.get("ASSAY_TERMINATION_LOG")
    if path is None and not os.path.isfile(protocol.TERMINATION_LOG):
        return
    try:
        with open(path or protocol.TERMINATION_LOG, "w") as f:
            f.write(text)
    except OSError:  # read-only or gone: nothing would read it
        pass


def _run(role: str, ctx: RunContext) -> BaseModel:
    if role == protocol.RESOLVE:
        from assay import layout, runrecord
        from assay.runner.inputs import resolve

        pinned, dataset, model = resolve(ctx)
        runrecord.claim(pinned.output_uri, runrecord.identity(pinned, model, dataset))
        return protocol.PinnedInputs(
            model=protocol.Ref(uri=model.uri, name=model.name, version=model.version),
            dataset=protocol.Ref(uri=dataset.uri, name=dataset.name, version=dataset.version),
            shards=len(dataset.shards), samples=dataset.samples, shards_per_index=pinned.shards_per_index,
            indexes=layout.index_count(len(dataset.shards), pinned.shards_per_index))
    if role == protocol.PPL:
        from assay.runner import ppl

        summary = ppl.run(ctx)
        return protocol.PplSummary(shards=summary.shards_total, skipped=summary.shards_skipped,
                                   samples=summary.samples_done)
    from assay.runner import cmp

    return protocol.MetricsSummary.bounded(cmp.run(ctx))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in protocol.ROLES:
        print(f"usage: python -m assay.runner {'|'.join(protocol.ROLES)}", file=sys.stderr)
        return 2
    role = argv[0]
    try:
        ctx = RunContext.from_env()
    except AssayError as exc:
        return _failed(protocol.failure_of(exc))
    if role == protocol.PPL:
        return _supervised(role, ctx)
    return _step(role, ctx)


def _failed(failure: protocol.Failure) -> int:
    print(failure.text(), file=sys.stderr)
    write_termination_message(protocol.failure_message(failure))
    return failure.exit_code


def _step(role: str, ctx: RunContext) -> int:
    worker = ctx.worker_index if role == protocol.PPL else None
    with setup_logging(ctx, role, worker, json_format=True):
        log = logging.getLogger(f"assay.{role}")
        try:
            write_termination_message(protocol.result_message(_run(role, ctx)))
        except Exception as exc:  # noqa: BLE001 - every failure becomes the step's report (logged there)
            failure = logs.failure_of(log, exc)
            write_termination_message(protocol.failure_message(failure))
            return failure.exit_code
    return 0


#: How long the handler's leftover processes get between SIGTERM and SIGKILL once the step has ended.
GROUP_GRACE_SECONDS = 5.0


def _supervised(role: str, ctx: RunContext) -> int:
    """Run the step in a forked child leading its own process group; turn its end into the step's exit code."""
    global _step_group
    returned_r, returned_w = os.pipe()  # not inherited by what the handler starts (O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    # Blocked across the fork, so that a stop signal arriving meanwhile waits for the parent to know the
    # child's group (and is then passed on to it) instead of being lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    pid = os.fork()
    if pid == 0:  # the child: the step itself, then one byte saying that it returned
        code = EXIT_RETRYABLE
        try:
            os.close(returned_r)
            groups.lead_group_and_die_with(parent)
            # the child is no PID 1: the defaults end it (and Ctrl-C raises KeyboardInterrupt) as before
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            code = _step(role, ctx)
            os.write(returned_w, b"1")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(returned_w)
    # the parent: pass the kubelet's SIGTERM (and Ctrl-C, the child being in a group of its own) on to the
    # whole group, then wait for the step
    _step_group = pid
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _, status = os.waitpid(pid, 0)
    os.set_blocking(returned_r, False)  # a process the handler forked may still hold the write end
    try:
        returned = os.read(returned_r, 1) == b"1"
    except BlockingIOError:
        returned = False
    os.close(returned_r)
    groups.end_groups([pid], GROUP_GRACE_SECONDS)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)  # as a shell reports it; the kubelet tells OOMKilled apart itself
    code = os.WEXITSTATUS(status)
    if code == 0 and not returned:
        return _failed(protocol.Failure(error=f"{role} {groups.EARLY_EXIT}", hint=groups.EARLY_EXIT_HINT,
                                        kind="HandlerError"))
    return code


if __name__ == "__main__":
    sys.exit(main())
