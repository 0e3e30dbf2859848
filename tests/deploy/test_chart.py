"""charts/assay: helm lint, helm template with default and other values, every object valid for
Kubernetes 1.31 (and the newest schema kubernetes-validate has), the CRD template == crds/, the values
schema refusing bad values, the watch modes wired to ASSAY_OPERATOR_NAMESPACES."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from scripts import crd_sync
from tests.deploy.helm import CHART, ROOT, by_kind, render, run_helm

K8S_VERSIONS = ("1.31.0", latest_version())

#: The value sets every rendering test runs with (name -> values).
VARIANTS: dict[str, dict] = {
    "default": {},
    "single-namespace": {"watch": {"namespaces": ["evals"]}},
    "several-namespaces": {"watch": {"namespaces": ["team-a", "team-b", "team-c"]}},
    "cluster-wide": {"watch": {"clusterWide": True}, "operator": {"apiScanning": True}},
    "scanning-namespaced": {"watch": {"namespaces": ["team-a"]}, "operator": {"apiScanning": True}},
    "servicemonitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "images": {"image": {"repository": "registry.example:5000/ml/assay-operator", "tag": "1.2.3"},
               "jobDefaults": {"runnerImage": {"repository": "registry.example/ml/assay-runner", "tag": "1.2.3-cu124"},
                               "serviceAccountName": "jobs", "runAsUser": 2000},
               "imagePullSecrets": [{"name": "regcred"}], "operator": {"logFormat": "text"}},
    "flow-control": {"flowControl": {"enabled": True}, "serviceAccount": {"name": "ops"}},
    "digest-no-metrics-no-crd": {"image": {"digest": "sha256:" + "a" * 64}, "metrics": {"enabled": False},
                                 "crds": {"install": False}, "serviceAccount": {"create": False, "name": "ops"}},
}


def env_of(objs) -> dict[str, str]:
    (dep,) = by_kind(objs, "Deployment")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_helm_lint_passes_strict():
    out = run_helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_object_is_valid_kubernetes(variant):
    objs = render(VARIANTS[variant])
    assert by_kind(objs, "Deployment"), "no Deployment rendered"
    for obj in objs:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a prometheus-operator CRD kind: checked in test_service_monitor_selects_the_metrics_service
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{variant}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: {exc}")


def test_chart_crd_template_is_the_crd_source_byte_for_byte():
    template = crd_sync.TEMPLATE.read_text()
    source = crd_sync.SOURCE.read_text()
    assert crd_sync.unwrap(template) == source, (
        "charts/assay/templates/crd-evaluationjob.yaml drifted from crds/evaluationjob.yaml; "
        "run `python -m scripts.crd_sync`")
    assert template == crd_sync.wrap(source)


def test_rendered_crd_equals_the_source_and_is_kept_on_uninstall():
    (crd,) = by_kind(render(), "CustomResourceDefinition")
    source = yaml.safe_load(crd_sync.SOURCE.read_text())
    assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert crd == source
    assert not by_kind(render({"crds": {"install": False}}), "CustomResourceDefinition")
    assert not (CHART / "crds").exists(), "a crds/ folder would be installed once and never upgraded"


@pytest.mark.parametrize("variant, kind, namespaces, watched", [
    ("default", "Role", ["assay-system"], "assay-system"),
    ("single-namespace", "Role", ["evals"], "evals"),
    ("several-namespaces", "Role", ["team-a", "team-b", "team-c"], "team-a,team-b,team-c"),
    ("cluster-wide", "ClusterRole", [None], ""),
])
def test_watch_mode_sets_rbac_scope_and_operator_namespaces(variant, kind, namespaces, watched):
    objs = render(VARIANTS[variant])
    binding_kind = "RoleBinding" if kind == "Role" else "ClusterRoleBinding"
    extra = ("-scanning", "-leader-election")  # kopf's observers; the Lease (tests/deploy/test_rbac.py)
    roles = [r for r in by_kind(objs, kind) if not r["metadata"]["name"].endswith(extra)]
    bindings = [b for b in by_kind(objs, binding_kind) if not b["metadata"]["name"].endswith(extra)]
    assert [r["metadata"].get("namespace") for r in roles] == namespaces
    assert [b["metadata"].get("namespace") for b in bindings] == namespaces
    for b in bindings:
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": "rel-assay"}
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "rel-assay", "namespace": "assay-system"}]
    if kind == "Role":
        assert not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding")
    assert env_of(objs)["ASSAY_OPERATOR_NAMESPACES"] == watched


def test_namespaces_setting_parses_what_the_chart_renders():
    from assay_operator.settings import Settings

    for variant, expected in (("several-namespaces", ["team-a", "team-b", "team-c"]), ("cluster-wide", [])):
        env = env_of(render(VARIANTS[variant]))
        settings = Settings(**{k.removeprefix("ASSAY_OPERATOR_").lower(): v for k, v in env.items()
                               if k.startswith("ASSAY_OPERATOR_") and k != "ASSAY_OPERATOR_NAMESPACES"
                               and v is not None},  # valueFrom (the Lease's namespace) is the kubelet's
                            namespaces=env["ASSAY_OPERATOR_NAMESPACES"])
        assert settings.namespaces == expected


def test_every_operator_env_variable_is_a_setting():
    """A typo in a variable name would be silently ignored by pydantic-settings (extra="ignore")."""
    from assay_operator.settings import Settings

    for variant in VARIANTS:
        for name in env_of(render(VARIANTS[variant])):
            if name.startswith("ASSAY_OPERATOR_"):
                assert name.removeprefix("ASSAY_OPERATOR_").lower() in Settings.model_fields, name


def test_job_defaults_and_images_reach_the_operator():
    objs = render(VARIANTS["images"])
    (dep,) = by_kind(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example:5000/ml/assay-operator:1.2.3"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    env = env_of(objs)
    assert env["ASSAY_OPERATOR_RUNNER_IMAGE"] == "registry.example/ml/assay-runner:1.2.3-cu124"
    assert env["ASSAY_OPERATOR_POD_SERVICE_ACCOUNT"] == "jobs"
    assert env["ASSAY_OPERATOR_RUN_AS_USER"] == "2000"
    assert env["ASSAY_OPERATOR_LOG_FORMAT"] == "text"
    default = env_of(render())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert default["ASSAY_OPERATOR_RUNNER_IMAGE"] == f"ghcr.io/assay-dev/assay-runner:{chart['appVersion']}"
    (dep,) = by_kind(render(VARIANTS["digest-no-metrics-no-crd"]), "Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/assay-dev/assay-operator@sha256:" + "a" * 64


def test_default_image_names_match_the_dockerfile_targets_and_settings():
    from assay_operator.settings import Settings

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert values["image"]["repository"].endswith("/assay-operator") and " AS operator" in dockerfile
    assert values["jobDefaults"]["runnerImage"]["repository"].endswith("/assay-runner") and " AS runner" in dockerfile
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert Settings().runner_image == f"{values['jobDefaults']['runnerImage']['repository']}:{chart['appVersion']}"


def test_probes_use_kopf_health_endpoint_and_metrics_service_targets_the_port():
    objs = render()
    (dep,) = by_kind(objs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 8000}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    env = env_of(objs)
    assert env["ASSAY_OPERATOR_HEALTH_PORT"] == "8080" and env["ASSAY_OPERATOR_METRICS_PORT"] == "8000"
    assert c["args"] == ["python", "-m", "assay_operator"]
    (svc,) = by_kind(objs, "Service")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 8000, "targetPort": "metrics", "protocol": "TCP"}]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    off = render(VARIANTS["digest-no-metrics-no-crd"])
    assert not by_kind(off, "Service") and env_of(off)["ASSAY_OPERATOR_METRICS_PORT"] == "0"
    assert not by_kind(off, "ServiceAccount")
    (dep,) = by_kind(off, "Deployment")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


def test_service_monitor_selects_the_metrics_service():
    assert not by_kind(render(), "ServiceMonitor")
    objs = render(VARIANTS["servicemonitor"])
    (sm,) = by_kind(objs, "ServiceMonitor")
    (svc,) = by_kind(objs, "Service")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["assay-system"]}
    assert sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["spec"]["endpoints"][0]["path"] == "/metrics"


@pytest.mark.parametrize("bad", [
    {"watch": {"namespaces": ["Not_A_Namespace"]}},
    {"unknownKey": 1},
    {"operator": {"logFormat": "xml"}},
    {"jobDefaults": {"runAsUser": 0}},
    {"image": {"digest": "latest"}},
    {"flowControl": {"enabled": True, "lendablePercent": 150}},
])
def test_values_schema_refuses_bad_values(bad, tmp_path):
    values = tmp_path / "values.json"
    values.write_text(json.dumps(bad))
    proc = run_helm("template", "rel", str(CHART), "--values", str(values), check=False)
    assert proc.returncode != 0 and "values don't meet the specifications of the schema" in proc.stderr, proc.stderr


def test_notes_say_how_to_submit_watch_and_read_results():
    proc = run_helm("install", "rel", str(CHART), "--dry-run=client", "--namespace", "assay-system")
    notes = proc.stdout.split("NOTES:", 1)[1]
    for text in ("kubectl -n assay-system apply -f examples/minio/evaluationjob.yaml", "assay job watch",
                 "--for=jsonpath='{.status.completionTime}'", "assay job results", "create secret generic"):
        assert text in notes


def test_two_replicas_with_a_disruption_budget_spread_over_nodes_and_one_lease():
    """Issue 23: one replica was the only operator, standalone; now two, one leading on a Lease."""
    objs = render()
    (dep,) = by_kind(objs, "Deployment")
    assert dep["spec"]["replicas"] == 2 and "strategy" not in dep["spec"], "a rolling update keeps one running"
    pod = dep["spec"]["template"]["spec"]
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    (pdb,) = by_kind(objs, "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": dep["spec"]["selector"]}
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["ASSAY_OPERATOR_LEASE_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["ASSAY_OPERATOR_LEASE_NAME"]["value"] == "rel-assay"

    single = render({"operator": {"replicas": 1}})
    assert not by_kind(single, "PodDisruptionBudget")
    assert "affinity" not in by_kind(single, "Deployment")[0]["spec"]["template"]["spec"]


def test_flow_control_gives_the_operators_service_account_a_priority_level_of_its_own():
    """Issue 23, item 5: off by default (cluster-scoped objects an admin usually owns); when on, every
    request of the operator's service account, and only its, goes to the chart's own level."""
    assert not by_kind(render(), "FlowSchema") and not by_kind(render(), "PriorityLevelConfiguration")
    objs = render({"flowControl": {"enabled": True, "matchingPrecedence": 500}, "serviceAccount": {"name": "ops"}})
    (schema,), (level,) = by_kind(objs, "FlowSchema"), by_kind(objs, "PriorityLevelConfiguration")
    assert schema["spec"]["priorityLevelConfiguration"]["name"] == level["metadata"]["name"] == "rel-assay"
    assert schema["spec"]["matchingPrecedence"] == 500
    (rule,) = schema["spec"]["rules"]
    assert rule["subjects"] == [{"kind": "ServiceAccount",
                                 "serviceAccount": {"name": "ops", "namespace": "assay-system"}}]
    assert rule["resourceRules"] == [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "namespaces": ["*"],
                                      "clusterScope": True}]
    assert level["spec"]["type"] == "Limited" and level["spec"]["limited"]["limitResponse"]["type"] == "Queue"
