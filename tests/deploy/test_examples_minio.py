"""examples/minio: every manifest is valid Kubernetes 1.31, the EvaluationJob passes the CRD schema and
reads its keys only from the Secret the example creates, and the MinIO and bucket Job share that Secret."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import yaml

from assay.spec import validate_manifest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "minio"


def docs():
    return [d for p in sorted(EXAMPLE.glob("*.yaml")) if p.name != "evaluationjob.yaml"
            for d in yaml.safe_load_all(p.read_text()) if d]


def test_manifests_are_valid_kubernetes():
    kinds = set()
    for obj in docs():
        kubernetes_validate.validate(obj, "1.31.0", strict=True)
        kinds.add(obj["kind"])
    assert kinds == {"Secret", "PersistentVolumeClaim", "Deployment", "Service", "Job"}


def test_evaluation_job_uses_s3_the_minio_service_and_the_secret():
    job = validate_manifest(yaml.safe_load((EXAMPLE / "evaluationjob.yaml").read_text()))
    spec = job["spec"]
    assert all(spec[k]["uri"].startswith("s3://assay/") for k in ("model", "dataset", "output"))
    (secret,) = [d for d in docs() if d["kind"] == "Secret"]
    (svc,) = [d for d in docs() if d["kind"] == "Service"]
    assert spec["storage"]["secretRef"]["name"] == secret["metadata"]["name"]
    # fully qualified: the short name would resolve only from the job's own namespace
    assert spec["storage"]["endpoint"] == f"http://{svc['metadata']['name']}.evals.svc.cluster.local:9000"
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert "CHANGE" in (EXAMPLE / "secret.yaml").read_text()


def test_readme_gives_the_laptop_steps():
    text = (EXAMPLE / "README.md").read_text()
    for step in ("kubectl port-forward", "AWS_ENDPOINT_URL=http://localhost:9000",
                 "assay dataset build examples/pennfudan/dataset.yaml --store s3://assay/store",
                 "assay model build examples/pennfudan/model.yaml --store s3://assay/store",
                 "kubectl apply", "assay job watch"):
        assert step in text, step
