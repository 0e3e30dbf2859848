"""The run contract (assay.protocol) is defined once and is what every driver speaks."""

from __future__ import annotations

import ast
import errno
import json
from pathlib import Path

import pytest

from assay import protocol
from assay.errors import EXIT_PERMANENT, EXIT_RETRYABLE, HandlerError, TransientStorageError

REPO = Path(__file__).resolve().parents[2]
PRODUCT = [*(REPO / "runner" / "assay").rglob("*.py"), *(REPO / "operator" / "assay_operator").rglob("*.py")]
#: The names only assay.protocol may bind at module level.
CONTRACT_NAMES = {"GROUP", "VERSION", "PLURAL", "API_VERSION", "KIND", "JOB_LABEL", "ROLE_LABEL", "ROLES",
                  "TERMINAL", "TERMINATION_LOG", "RETRY_TOKEN_ANNOTATION", "SUSPEND_ANNOTATION"}


def _module_assignments(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Name):
                    names.add(leaf.id)
    return names


def test_each_contract_fact_has_one_definition():
    """Before: the API group in five modules, TERMINAL in two, ROLES and the termination log path in two."""
    twice = {str(p.relative_to(REPO)): sorted(_module_assignments(p) & CONTRACT_NAMES)
             for p in PRODUCT if p.name != "protocol.py"}
    assert {k: v for k, v in twice.items() if v} == {}
    literal = [str(p.relative_to(REPO)) for p in PRODUCT
               if p.name != "protocol.py" and ('"assay.dev' in p.read_text() or "'assay.dev" in p.read_text())]
    assert literal == [], "spell the API group as protocol.GROUP"


@pytest.mark.parametrize(("exc", "code", "kind"), [
    (OSError(errno.ENOSPC, "No space left on device"), EXIT_PERMANENT, "OSError"),
    (PermissionError(errno.EACCES, "Permission denied", "/out"), EXIT_PERMANENT, "PermissionError"),
    (OSError(errno.EIO, "Input/output error"), EXIT_RETRYABLE, "OSError"),
    (ConnectionResetError("reset"), EXIT_RETRYABLE, "ConnectionResetError"),
    (TransientStorageError("store down"), EXIT_RETRYABLE, "TransientStorageError"),
    (HandlerError("predict failed", "fix it"), EXIT_PERMANENT, "HandlerError"),
    (KeyError("x"), EXIT_RETRYABLE, "KeyError"),
])
def test_one_rule_from_exception_to_exit_code(exc, code, kind):
    """Before, an OSError was permanent under `assay run`, retryable in a pod and by errno in the CLI; now
    by errno everywhere: what a person must fix (disk full, permissions, paths) is permanent."""
    failure = protocol.failure_of(exc)
    assert (failure.exit_code, failure.kind) == (code, kind)
    assert failure.hint, "every failure says what to do next"


def test_a_report_is_one_json_document_the_operator_parses_back():
    failure = protocol.Failure(error="no dataset at s3://b/d", hint="build one", kind="ObjectNotFound")
    assert protocol.parse_failure(protocol.failure_message(failure)) == failure
    assert protocol.parse_result(protocol.failure_message(failure), protocol.PplSummary) is None
    ppl = protocol.PplSummary(shards=2, skipped=1, samples=9)
    assert protocol.parse_result(protocol.result_message(ppl), protocol.PplSummary) == ppl
    assert protocol.parse_failure(protocol.result_message(ppl)) is None
    # a pod killed before it reported leaves its log tail (FallbackToLogsOnError): no report at all
    assert protocol.parse_failure("Traceback (most recent call last):\nSegmentation fault") is None


def test_a_long_failure_is_cut_to_fit_a_termination_message():
    failure = protocol.Failure(error="x" * 10_000, hint="h" * 1_000)
    text = protocol.failure_message(failure)
    assert len(text.encode()) <= protocol.MAX_REPORT_BYTES
    parsed = protocol.parse_failure(text)
    assert parsed.error.endswith("[...]") and parsed.hint and json.loads(text)["failure"]["retryable"] is False


def test_the_metrics_summary_has_one_bound_and_the_crd_agrees():
    """The summary was bounded twice, by two policies: by bytes in the pod, then to 32 sorted keys by the
    operator. Now MetricsSummary is the one bound: bytes for the termination message and at most
    MAX_SUMMARY_KEYS keys, the CRD's own limit on status.results.summary, made or parsed."""
    import yaml

    from assay.metrics import MetricsReport

    crd = yaml.safe_load((REPO / "crds" / "evaluationjob.yaml").read_text())
    results = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["results"]
    assert results["properties"]["summary"]["maxProperties"] == protocol.MAX_SUMMARY_KEYS

    tiny = MetricsReport("classification", {str(i): 0.0 for i in range(1000)}, ("accuracy", 0.5))
    doc = json.loads(protocol.result_message(protocol.MetricsSummary.bounded(tiny)))["result"]
    assert len(doc["summary"]) == protocol.MAX_SUMMARY_KEYS and doc["truncated"] == 1000 - protocol.MAX_SUMMARY_KEYS
    assert list(doc["summary"]) == [str(i) for i in range(protocol.MAX_SUMMARY_KEYS)], "in the report's order"

    odd = MetricsReport("coco", {"bbox/AP": 0.123456789, "nan": float("nan"), "inf": float("inf")}, ("bbox/AP", 0.1))
    text = protocol.result_message(protocol.MetricsSummary.bounded(odd))
    assert json.loads(text)["result"]["summary"] == {"bbox/AP": 0.123457, "nan": None, "inf": None}
    assert "NaN" not in text and "Infinity" not in text, "a report is strict JSON"

    # a report from another producer (an older runner image) is held to the same bound when parsed
    foreign = json.dumps({"result": {"evaluator": "coco", "headline": {"name": "a", "value": 1.0},
                                     "summary": {f"k{i}": 1.0 for i in range(300)}, "truncated": 5}})
    parsed = protocol.parse_result(foreign, protocol.MetricsSummary)
    assert len(parsed.summary) == protocol.MAX_SUMMARY_KEYS and parsed.truncated == 5 + 300 - protocol.MAX_SUMMARY_KEYS
