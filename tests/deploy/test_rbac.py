"""The chart grants exactly the API access the operator's code uses: no more verbs, no wildcards.

The needed (apiGroup, resource, verb) set is derived from the code, so a new API call without a chart
rule (or a chart rule nothing uses) fails here:
- operator/assay_operator/kube.py, the only module calling the API: each ``_batch()``/``_core()``/
  ``_custom()`` call is looked up in the kubernetes client, whose request builder names the HTTP method
  and the URL path (custom objects: the group and plural kube.py names);
- kopf's own calls for each resource main.py registers event handlers for: list and watch it;
- manifests.py sets ownerReferences with blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement
  admission plugin allows only with update on the owner's finalizers;
- with operator.apiScanning on, kopf's observers list and watch CRDs and (not cluster-wide) namespaces.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
from kubernetes import client

from assay.protocol import GROUP, PLURAL, VERSION
from tests.deploy.helm import by_kind, render
from tests.deploy.test_chart import VARIANTS

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator" / "assay_operator"
HTTP_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update"}


def _api_classes(tree: ast.Module) -> dict[str, type]:
    """Helper function name -> kubernetes API class, from ``def _batch(): return client.BatchV1Api(...)``."""
    out = {}
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef) and len(fn.body) == 1 and isinstance(fn.body[0], ast.Return):
            call = fn.body[0].value
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr.endswith("Api"):
                out[fn.name] = getattr(client, call.func.attr)
    return out


def rule_of(api: type, method: str) -> tuple[str, str, str]:
    """(apiGroup, resource[/subresource], verb) of one kubernetes client method, from its request builder."""
    src = inspect.getsource(getattr(api, f"_{method}_serialize"))
    http = re.search(r"method='(\w+)'", src).group(1)
    path = re.search(r"resource_path='([^']+)'", src).group(1)
    path = path.replace("{group}", GROUP).replace("{version}", VERSION).replace("{plural}", PLURAL)
    m = re.fullmatch(r"/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)(?:/namespaces/\{namespace\})?"
                     r"/(?P<resource>[a-z]+)(?P<named>/\{name\})?(?:/(?P<sub>[a-z]+))?", path)
    assert m, f"unexpected path {path}"
    resource = m["resource"] + (f"/{m['sub']}" if m["sub"] else "")
    if http == "GET":
        verb = "get" if m["named"] else "list"
    elif http == "DELETE":
        verb = "delete" if m["named"] else "deletecollection"
    else:
        verb = HTTP_VERBS[http]
    return m["group"] or "", resource, verb


def kube_module_rules() -> set[tuple[str, str, str]]:
    tree = ast.parse((OPERATOR / "kube.py").read_text())
    apis = _api_classes(tree)
    assert set(apis) == {"_batch", "_core", "_custom", "_coordination"}, apis
    src = (OPERATOR / "kube.py").read_text()
    assert "from assay.protocol import GROUP, PLURAL, VERSION" in src  # the paths below are of these
    out = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Call) and isinstance(node.func.value.func, ast.Name)
                and node.func.value.func.id in apis):
            if any(kw.arg == "watch" for kw in node.keywords):
                raise AssertionError("a watch call: add its rule derivation here")
            group, resource, verb = rule_of(apis[node.func.value.func.id], node.func.attr)
            if node.args and ast.unparse(node.args[0]) == "KUEUE_GROUP":  # the other custom objects: Kueue's
                assert 'KUEUE_GROUP, KUEUE_VERSIONS = "kueue.x-k8s.io"' in src
                group, resource = "kueue.x-k8s.io", ast.literal_eval(node.args[3])
            elif node.func.value.func.id == "_custom":
                assert ast.unparse(node.args[0]) == "GROUP", ast.unparse(node)  # assay.dev's own
            out.add((group, resource, verb))
    return out


def kopf_rules() -> set[tuple[str, str, str]]:
    import assay_operator.main as main

    tree = ast.parse((OPERATOR / "main.py").read_text())
    resources = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and ast.unparse(deco.func).startswith(("kopf.on.", "kopf.timer",
                                                                                      "kopf.daemon", "kopf.index")):
                    if ast.unparse(deco.func) in ("kopf.on.startup", "kopf.on.cleanup", "kopf.on.login"):
                        continue
                    assert ast.unparse(deco.func) == "kopf.on.event", "a handler that may need more verbs"
                    group, _, plural = (getattr(main, a.id) if isinstance(a, ast.Name) else a.value
                                        for a in deco.args[:3])
                    resources.add((group, plural))
    assert resources == {("assay.dev", "evaluationjobs"), ("batch", "jobs"), ("", "pods"), ("", "events")}
    out = set()
    for group, plural in resources:
        out |= {(group, plural, "list"), (group, plural, "watch")}
    if '"blockOwnerDeletion": True' in (OPERATOR / "manifests.py").read_text():
        out.add(("assay.dev", "evaluationjobs/finalizers", "update"))
    return out


#: Leader election's Lease: granted by a Role in the release namespace only, not where jobs are watched.
LEASE_RULES = {("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update")}


def needed_rules() -> set[tuple[str, str, str]]:
    return (kube_module_rules() - LEASE_RULES) | kopf_rules()


def chart_rules(objs, kind: str, scanning: bool = False, suffix: str = "-scanning") -> list[set[tuple[str, str, str]]]:
    """The rules of each role of ``kind``: those named ``*-scanning`` (or ``suffix``) when ``scanning``,
    else the others but the leader-election Role."""
    out = []
    for role in by_kind(objs, kind):
        name = role["metadata"]["name"]
        wanted = name.endswith(suffix) if scanning else not name.endswith(("-scanning", "-leader-election"))
        if not wanted:
            continue
        rules = set()
        for rule in role["rules"]:
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    for verb in rule["verbs"]:
                        assert "*" not in (group, res, verb), f"wildcard in {role['metadata']['name']}: {rule}"
                        rules.add((group, res, verb))
        out.append(rules)
    return out


def test_only_kube_py_imports_the_kubernetes_client():
    for path in OPERATOR.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        if path.name != "kube.py":
            assert "kubernetes" not in names, f"{path.name} imports the kubernetes client; only kube.py may"


def test_derivation_reads_kube_py_calls():
    assert kube_module_rules() == {
        ("assay.dev", "evaluationjobs", "get"), ("assay.dev", "evaluationjobs/status", "patch"),
        ("batch", "jobs", "get"), ("batch", "jobs", "create"), ("batch", "jobs", "patch"),
        ("batch", "jobs", "delete"), ("", "events", "create"), ("kueue.x-k8s.io", "workloads", "list"),
        *LEASE_RULES}


def test_the_operator_reads_no_secret_and_no_store():
    """The operator stays out of the data plane: no Secret access in its RBAC or code, no storage calls."""
    for variant in VARIANTS.values():
        for kind in ("Role", "ClusterRole"):
            for rules in chart_rules(render(variant), kind) + chart_rules(render(variant), kind, scanning=True):
                assert not any(res == "secrets" for _, res, _ in rules)
    assert not re.search(r"_namespaced_secret", (OPERATOR / "kube.py").read_text())
    for path in OPERATOR.glob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not {m for m in modules if m.startswith(("boto", "assay.storage", "assay.shards", "assay.packages",
                                                         "assay.results", "assay.runrecord"))}, path.name
        assert not re.search(r"\bstorage\.(read|write|exists|list|download|upload|s3)", path.read_text()), path.name


@pytest.mark.parametrize("variant, kind", [("default", "Role"), ("several-namespaces", "Role"),
                                           ("cluster-wide", "ClusterRole")])
def test_chart_rules_equal_the_calls_the_operator_makes(variant, kind):
    per_role = chart_rules(render(VARIANTS[variant]), kind)
    assert per_role
    for rules in per_role:
        assert rules == needed_rules(), (
            f"missing: {sorted(needed_rules() - rules)}; not used by the code: {sorted(rules - needed_rules())}")


def test_scanning_role_only_when_enabled_and_only_for_kopf_observers():
    from kopf._core.reactor import observation

    src = inspect.getsource(observation)
    assert "references.CRDS" in src and "references.NAMESPACES" in src
    crds = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
    namespaces = {("", "namespaces", v) for v in ("list", "watch")}
    assert chart_rules(render(VARIANTS["cluster-wide"]), "ClusterRole", scanning=True) == [crds]
    assert chart_rules(render(VARIANTS["scanning-namespaced"]), "ClusterRole", scanning=True) == [crds | namespaces]
    assert chart_rules(render(), "ClusterRole", scanning=True) == []


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_lease_is_granted_in_the_release_namespace_only(variant):
    """Leader election's Lease rules are in one Role of the operator's own namespace, nowhere else."""
    objs = render(VARIANTS[variant])
    (role,) = [r for r in by_kind(objs, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    assert role["metadata"]["namespace"] == "assay-system"
    assert chart_rules(objs, "Role", scanning=True, suffix="-leader-election") == [LEASE_RULES]
    for kind in ("Role", "ClusterRole"):
        for rules in chart_rules(objs, kind) + chart_rules(objs, kind, scanning=True):
            assert not rules & LEASE_RULES, kind
