"""`assay job`: run EvaluationJobs on a Kubernetes cluster (kubeconfig or in-cluster credentials).

Examples:
    assay job submit examples/pennfudan/job.yaml
    assay job submit job.yaml --detach
    assay job list
    assay job watch pennfudan-maskrcnn
    assay job results pennfudan-maskrcnn
    assay job logs pennfudan-maskrcnn --shard 3
    assay job cancel pennfudan-maskrcnn
"""

from __future__ import annotations

from typing import Any

import click

from assay.cli._output import emit, format_option, table

context_option = click.option("--context", default=None, help="kubeconfig context (default: the current one).")
namespace_option = click.option("-n", "--namespace", default=None,
                                help="Namespace (default: the context's, or the manifest's).")


def _cluster(context: str | None, namespace: str | None):
    from assay import cluster

    return cluster.Cluster(context=context, namespace=namespace)


@click.group("job")
def job() -> None:
    """Submit, watch and inspect EvaluationJobs on a cluster."""


@job.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--detach", is_flag=True, help="Return once submitted instead of waiting for the result.")
@context_option
@namespace_option
@click.pass_context
def submit(ctx: click.Context, manifest: str, detach: bool, context: str | None, namespace: str | None) -> None:
    """Validate MANIFEST against the CRD, create it, and wait for the result (non-zero unless it succeeds)."""
    from assay.spec import load_job

    evaljob = load_job(manifest)
    c = _cluster(context, namespace)
    created = c.submit(evaljob)
    name, ns = created["metadata"]["name"], created["metadata"]["namespace"]
    click.echo(f"submitted evaluationjob {ns}/{name}")
    if detach:
        click.echo(f"next: assay job watch {name} -n {ns}\n      assay job results {name} -n {ns}")
        return
    c.namespace = ns
    ctx.exit(_follow(c, name))


@job.command(name="list")
@click.option("-A", "--all-namespaces", is_flag=True, help="List every namespace.")
@context_option
@namespace_option
@format_option
def list_(all_namespaces: bool, context: str | None, namespace: str | None, fmt: str) -> None:
    """List EvaluationJobs with phase, shards, progress and headline result."""
    from assay.cluster import summarize

    rows = [summarize(o) for o in _cluster(context, namespace).list(all_namespaces)]
    cols = ["namespace", "name", "phase", "shards", "progress", "result"] if all_namespaces else \
        ["name", "phase", "shards", "progress", "result"]
    emit(fmt, rows, table(rows, cols))


@job.command()
@click.argument("name")
@context_option
@namespace_option
@click.pass_context
def watch(ctx: click.Context, name: str, context: str | None, namespace: str | None) -> None:
    """Show live progress of NAME until it finishes (non-zero unless it succeeds)."""
    ctx.exit(_follow(_cluster(context, namespace), name))


@job.command()
@click.argument("name")
@context_option
@namespace_option
@format_option
def results(name: str, context: str | None, namespace: str | None, fmt: str) -> None:
    """Print the summary metrics of NAME (the full metrics are at status.resultsUri)."""
    from assay.errors import AssayError

    st = _cluster(context, namespace).get(name).get("status") or {}
    res = st.get("results") or {}
    if not res:
        raise AssayError(f"{name} has no results yet (phase {st.get('phase') or 'Pending'})",
                         f"wait for it: assay job watch {name}")
    rows = [{"metric": k, "value": f"{v:.4f}" if isinstance(v, float) else v}
            for k, v in (res.get("summary") or {}).items()]
    human = table(rows, ["metric", "value"])
    if res.get("truncated"):
        human += f"\n({res['truncated']} more in {st.get('resultsUri')})"
    emit(fmt, {"results": res, "resultsUri": st.get("resultsUri"), "modelDigest": st.get("modelDigest"),
               "datasetDigest": st.get("datasetDigest")}, human)


@job.command()
@click.argument("name")
@click.option("--shard", type=int, default=None, help="Only the ppl worker that processes this shard.")
@click.option("--cmp", "cmp_", is_flag=True, help="The metrics (cmp) pod instead of the ppl workers.")
@context_option
@namespace_option
def logs(name: str, shard: int | None, cmp_: bool, context: str | None, namespace: str | None) -> None:
    """Print the logs of NAME's pods."""
    for pod, text in _cluster(context, namespace).logs(name, shard=shard, role="cmp" if cmp_ else "ppl"):
        click.secho(f"==> {pod} <==", bold=True)
        click.echo(text.rstrip("\n"))


@job.command()
@click.argument("name")
@context_option
@namespace_option
def cancel(name: str, context: str | None, namespace: str | None) -> None:
    """Delete NAME; its Jobs and pods are deleted with it (finished shards stay in the store)."""
    _cluster(context, namespace).cancel(name)
    click.echo(f"cancelled evaluationjob {name}")


def _line(obj: dict[str, Any]) -> str:
    st = obj.get("status") or {}
    prog = st.get("progress") or {}
    pct = float(prog.get("percent") or 0.0)
    bar = "#" * int(pct // 5) + "-" * (20 - int(pct // 5))
    bits = [f"{st.get('phase') or 'Pending':<10}", f"[{bar}] {pct:5.1f}%",
            f"shards {(st.get('shards') or {}).get('summary', '?')}"]
    if prog.get("samplesPerSecond"):
        bits.append(f"{prog['samplesPerSecond']:.1f} samples/s")
    if prog.get("eta"):
        bits.append(f"eta {prog['eta']}")
    return "  ".join(bits)


def _follow(c: Any, name: str) -> int:
    """Print a progress line per status change; 0 when it succeeded, 1 otherwise."""
    last: dict[str, Any] = {}
    for obj in c.watch(name):
        last = obj
        click.echo(_line(obj))
    st = last.get("status") or {}
    if st.get("phase") == "Succeeded":
        res = st.get("results") or {}
        click.secho(f"succeeded: {res.get('headlineMetric', 'result')} = {res.get('headline', '?')}", fg="green")
        click.echo(f"next: assay job results {name}")
        return 0
    click.secho(f"failed ({st.get('reason', '?')}): {st.get('message', '')}", fg="red", err=True)
    click.echo(f"next: assay job logs {name}", err=True)
    return 1
