"""The EvaluationJob manifest: schema validation against the CRD, and typed models shared by the CLI,
the local runner, the operator and the pods.

``crds/evaluationjob.yaml`` is the single source of the manifest's rules. ``load_job`` validates a
manifest against that schema (with the CRD's defaults applied, unknown fields rejected as
``kubectl --validate=strict`` would), then parses it into the pydantic models below, which mirror the
schema field for field (``tests/unit/test_spec.py`` fails on drift).
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from assay.errors import SpecError
from assay.protocol import API_VERSION, KIND


def crd_path() -> Path:
    """The CRD file: inside the installed package, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "crds" / "evaluationjob.yaml", here.parents[1] / "crds" / "evaluationjob.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("crds/evaluationjob.yaml is missing from this installation")


@functools.cache
def crd() -> dict[str, Any]:
    return yaml.safe_load(crd_path().read_text())


def job_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the served version."""
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


# ------------------------------------------------------------------------------------------ validation


def apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """Fill in the schema's ``default`` values the way the API server does (objects present or defaulted)."""
    if not isinstance(obj, dict) or schema.get("type") != "object":
        if isinstance(obj, list) and "items" in schema:
            return [apply_defaults(item, schema["items"]) for item in obj]
        return obj
    out = dict(obj)
    for name, sub in schema.get("properties", {}).items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if name in out:
            out[name] = apply_defaults(out[name], sub)
    return out


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Copy of an OpenAPI schema for jsonschema: objects without preserve-unknown-fields reject unknown keys."""
    s = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if "properties" in s:
        s["properties"] = {k: _strict(v) for k, v in s["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in s:
            s["additionalProperties"] = False
    if isinstance(s.get("items"), dict):
        s["items"] = _strict(s["items"])
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = _strict(s["additionalProperties"])
    return s


def _field_path(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validate_manifest(doc: Any, source: str = "manifest") -> dict[str, Any]:
    """Validate an EvaluationJob document against the CRD; return it with defaults applied.

    Raises SpecError naming the first bad field and what it accepts.
    """
    import jsonschema

    if not isinstance(doc, dict):
        raise SpecError(f"{source}: expected a YAML mapping (an EvaluationJob), got {type(doc).__name__}")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise SpecError(
            f"{source}: apiVersion/kind is {doc.get('apiVersion')!r}/{doc.get('kind')!r}",
            f"an evaluation manifest starts with 'apiVersion: {API_VERSION}' and 'kind: {KIND}'",
        )
    meta = doc.get("metadata") or {}
    if not isinstance(meta, dict):
        raise SpecError(f"{source}: metadata must be a mapping with a name")
    name = meta.get("name")
    if not isinstance(name, str) or not _is_dns_label(name):
        raise SpecError(f"{source}: metadata.name {name!r} is not a valid name",
                        "use lowercase letters, digits and '-', at most 53 characters, starting with a letter")
    schema = job_schema()
    doc = apply_defaults(doc, schema)
    validator = jsonschema.Draft7Validator(_strict(schema))
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.path), list(map(str, e.path))))
    if errors:
        err = errors[0]
        field = _field_path(err.path)
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            allowed = ", ".join(sorted(err.schema.get("properties", {})))
            raise SpecError(f"{source}: unknown field {field}.{extra[0]}" if err.path
                            else f"{source}: unknown field {extra[0]}", f"fields allowed here: {allowed}")
        message = (f"{err.instance!r} is not a valid value (it must match {err.validator_value})"
                   if err.validator == "pattern" else err.message)
        raise SpecError(f"{source}: {field}: {message}",
                        _describe(err.schema) or "see crds/evaluationjob.yaml for the schema")
    return doc


def _describe(schema: dict[str, Any]) -> str:
    bits = []
    if "enum" in schema:
        bits.append("one of " + ", ".join(map(str, schema["enum"])))
    if "minimum" in schema or "maximum" in schema:
        bits.append(f"between {schema.get('minimum', '-inf')} and {schema.get('maximum', 'inf')}")
    if schema.get("description"):
        bits.append(schema["description"])
    return "; ".join(bits)


def _is_dns_label(name: str) -> bool:
    # 53 leaves room for the "-ppl"/"-cmp" suffixes and the pod-name hash within 63 characters.
    import re

    return bool(re.fullmatch(r"[a-z]([-a-z0-9]{0,51}[a-z0-9])?", name))


# ------------------------------------------------------------------------------------------ typed models


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)


class UriRef(_Model):
    uri: str


class NameRef(_Model):
    name: str


class Runtime(_Model):
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", alias="imagePullPolicy")
    image_pull_secrets: list[NameRef] = Field(default_factory=list, alias="imagePullSecrets")
    env: list[dict[str, Any]] = Field(default_factory=list)
    service_account_name: str | None = Field(None, alias="serviceAccountName")
    runtime_class_name: str | None = Field(None, alias="runtimeClassName")


class Ppl(_Model):
    workers: int = 1
    batch_size: int = Field(4, alias="batchSize")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    prefetch: int = 2
    decode_threads: int = Field(0, alias="decodeThreads")
    channels_last: bool = Field(False, alias="channelsLast")
    compile: bool = False
    pin_memory: bool = Field(True, alias="pinMemory")
    shards_per_index: int = Field(0, alias="shardsPerIndex")
    max_retries_per_shard: int = Field(3, alias="maxRetriesPerShard")
    resources: dict[str, Any] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] = Field(default_factory=dict)
    priority_class_name: str | None = Field(None, alias="priorityClassName")


class Cmp(_Model):
    resources: dict[str, Any] = Field(default_factory=dict)


class Storage(_Model):
    endpoint: str | None = None
    region: str | None = None
    secret_ref: NameRef | None = Field(None, alias="secretRef")


class JobSpec(_Model):
    model: UriRef
    dataset: UriRef
    output: UriRef
    evaluator: Literal["coco", "classification", "handler"] | None = None
    runtime: Runtime = Field(default_factory=Runtime)
    ppl: Ppl = Field(default_factory=Ppl)
    cmp: Cmp = Field(default_factory=Cmp)
    storage: Storage = Field(default_factory=Storage)
    active_deadline_seconds: int | None = Field(None, alias="activeDeadlineSeconds")
    pending_deadline_seconds: int = Field(1800, alias="pendingDeadlineSeconds")
    ttl_seconds_after_finished: int | None = Field(None, alias="ttlSecondsAfterFinished")
    suspend: bool = False
    retry_token: str | None = Field(None, alias="retryToken")
    queue_name: str | None = Field(None, alias="queueName")


class EvaluationJob(_Model):
    name: str
    namespace: str = "default"
    spec: JobSpec

    @classmethod
    def from_manifest(cls, doc: dict[str, Any], source: str = "manifest") -> EvaluationJob:
        doc = validate_manifest(doc, source)
        meta = doc["metadata"]
        return cls(name=meta["name"], namespace=meta.get("namespace") or "default", spec=JobSpec(**doc["spec"]))

    def to_manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self.spec.model_dump(by_alias=True, exclude_none=True),
        }


def with_local_uris_relative_to(job: EvaluationJob, folder: Path) -> EvaluationJob:
    """Resolve relative local paths in model/dataset/output URIs against ``folder`` (the manifest's)."""

    def fix(ref: UriRef) -> UriRef:
        uri = ref.uri
        if "://" in uri or os.path.isabs(uri):
            return ref
        return UriRef(uri=os.path.normpath(os.path.join(folder, uri)))

    s = job.spec
    spec = s.model_copy(update={"model": fix(s.model), "dataset": fix(s.dataset), "output": fix(s.output)})
    return job.model_copy(update={"spec": spec})


def load_job(path: str | os.PathLike) -> EvaluationJob:
    """Read and validate an EvaluationJob YAML file."""
    from assay.config_files import parse_yaml, read_text

    source = os.fspath(path)
    docs = parse_yaml(read_text(source, "EvaluationJob YAML file"), source)
    if len(docs) != 1:
        raise SpecError(f"{source}: expected exactly one YAML document, found {len(docs)}")
    return EvaluationJob.from_manifest(docs[0], source)


@dataclass(frozen=True)
class RunSetting:
    """One field of a RunContext: the variable that carries it into a pod, where a job's spec holds it (an
    attribute path), and its name in run.json's settings when it can change what the model predicts."""

    env: str
    spec: str | None = None
    predicts: str | None = None


#: The run's settings, listed once: RunContext's fields, the pods' environment, `for_worker` and the settings
#: that make a run's identity (run.json, each results record's settings hash) all come from this table.
RUN_SETTINGS: dict[str, RunSetting] = {
    "job_name": RunSetting("ASSAY_JOB_NAME"),
    "model_uri": RunSetting("ASSAY_MODEL_URI", "model.uri"),
    "dataset_uri": RunSetting("ASSAY_DATASET_URI", "dataset.uri"),
    "output_uri": RunSetting("ASSAY_OUTPUT_URI", "output.uri"),
    "model_version": RunSetting("ASSAY_MODEL_VERSION"),
    "dataset_version": RunSetting("ASSAY_DATASET_VERSION"),
    "evaluator": RunSetting("ASSAY_EVALUATOR", "evaluator", predicts="evaluator"),
    "worker_index": RunSetting("JOB_COMPLETION_INDEX"),
    "worker_count": RunSetting("ASSAY_WORKERS", "ppl.workers"),
    "shards_per_index": RunSetting("ASSAY_SHARDS_PER_INDEX", "ppl.shards_per_index"),
    "batch_size": RunSetting("ASSAY_BATCH_SIZE", "ppl.batch_size", predicts="batchSize"),
    "device": RunSetting("ASSAY_DEVICE", "ppl.device", predicts="device"),
    "precision": RunSetting("ASSAY_PRECISION", "ppl.precision", predicts="precision"),
    "prefetch": RunSetting("ASSAY_PREFETCH", "ppl.prefetch"),
    "decode_threads": RunSetting("ASSAY_DECODE_THREADS", "ppl.decode_threads"),
    "channels_last": RunSetting("ASSAY_CHANNELS_LAST", "ppl.channels_last", predicts="channelsLast"),
    "compile": RunSetting("ASSAY_COMPILE", "ppl.compile", predicts="compile"),
    "pin_memory": RunSetting("ASSAY_PIN_MEMORY", "ppl.pin_memory"),
}


class RunContext(_Model):
    """What one ppl or cmp process needs to know, built from a job spec (locally) or the environment (pods)."""

    job_name: str
    model_uri: str
    dataset_uri: str
    output_uri: str
    #: Exact versions the run was pinned to at its start; workers and cmp refuse anything else.
    model_version: str | None = None
    dataset_version: str | None = None
    evaluator: str | None = None
    #: ppl: the work item (Job index) this process predicts: shards [i*n, (i+1)*n) for n shards per
    #: index (``shards_per_index``; 0 means one item holding every shard).
    worker_index: int = 0
    worker_count: int = 1
    shards_per_index: int = 0
    batch_size: int = 4
    device: str = "auto"
    precision: str = "fp32"
    prefetch: int = 2
    decode_threads: int = 0
    channels_last: bool = False
    compile: bool = False
    pin_memory: bool = True

    @classmethod
    def for_worker(cls, job: EvaluationJob, index: int) -> RunContext:
        def at(path: str) -> Any:
            value: Any = job.spec
            for part in path.split("."):
                value = getattr(value, part)
            return value

        return cls(job_name=job.name, worker_index=index,
                   **{f: at(s.spec) for f, s in RUN_SETTINGS.items() if s.spec is not None})

    #: Environment variables carrying a RunContext into a pod (the operator sets them; __main__ reads them).
    ENV: ClassVar[dict[str, str]] = {f: s.env for f, s in RUN_SETTINGS.items()}

    def prediction_settings(self) -> dict[str, Any]:
        """The settings that can change what the model predicts (not the worker count), by run.json's names."""
        return {s.predicts: getattr(self, f) for f, s in RUN_SETTINGS.items() if s.predicts}

    def to_env(self) -> dict[str, str]:
        """Environment for a pod; worker_index is left to Kubernetes (JOB_COMPLETION_INDEX)."""
        return {var: str(getattr(self, f)) for f, var in self.ENV.items()
                if f != "worker_index" and getattr(self, f) is not None}

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> RunContext:
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f, var in cls.ENV.items():
            if var in env and env[var] != "":
                values[f] = env[var]
        missing = [cls.ENV[f] for f in ("job_name", "model_uri", "dataset_uri", "output_uri") if f not in values]
        if missing:
            raise SpecError(f"runner environment lacks {', '.join(missing)}",
                            "the operator sets these; to run by hand use `assay run job.yaml`")
        try:
            return cls(**values)
        except ValidationError as exc:
            # Name the variable and what it takes, never its value: a variable may come from a Secret
            # (valueFrom) and this message reaches the pod's termination message and the job's status.
            bad = "; ".join(f"{cls.ENV.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in exc.errors())
            raise SpecError(f"bad runner environment: {bad}",
                            "the operator sets these; to run by hand use `assay run job.yaml`") from None


def env_seconds(name: str, default: float, minimum: float = 0.0) -> float:
    """A number of seconds >= ``minimum`` from the environment variable ``name`` (unset or empty:
    ``default``). A bad value fails naming the variable, never the value (it may come from a Secret)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (minimum <= value < float("inf")):
        raise SpecError(f"{name} is not valid: it takes a number of seconds >= {minimum:g}",
                        f"fix or unset {name} (default {default:g})")
    return value
