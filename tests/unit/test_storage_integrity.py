"""storage settings as issue 9 found them failing (bad ASSAY_STORAGE_* values) and the redaction of
credentials in URLs. The tests against servers and processes are in tests/e2e/test_storage_integrity.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from assay import storage
from assay.errors import SpecError
from tests.conftest import cli as _cli

# ------------------------------------------------------------------------------------------- settings

BAD_SETTINGS = [
    ("ASSAY_STORAGE_RETRIES", "0", "whole number of attempts >= 1"),
    ("ASSAY_STORAGE_RETRIES", "-2", "whole number of attempts >= 1"),
    ("ASSAY_STORAGE_RETRIES", "many", "whole number of attempts >= 1"),
    ("ASSAY_STORAGE_RETRIES", "2.5", "whole number of attempts >= 1"),
    ("ASSAY_STORAGE_RETRY_DELAY", "-1", "seconds >= 0"),
    ("ASSAY_STORAGE_RETRY_DELAY", "nan", "seconds >= 0"),
    ("ASSAY_STORAGE_CONNECT_TIMEOUT", "0", "seconds > 0"),
    ("ASSAY_STORAGE_READ_TIMEOUT", "soon", "seconds > 0"),
    ("ASSAY_STORAGE_DEADLINE", "-60", "seconds > 0"),
    ("ASSAY_STORAGE_DEADLINE", "inf", "seconds > 0"),
    ("ASSAY_STORAGE_MULTIPART_THRESHOLD", "1K", "a size of at least 5M"),
    ("ASSAY_STORAGE_MULTIPART_THRESHOLD", "big", "a size of at least 5M"),
    ("ASSAY_S3_ADDRESSING_STYLE", "sideways", "auto, virtual or path"),
]


class TestSettings:
    """ASSAY_STORAGE_RETRIES=0 ended in a raw traceback with exit code 1 ("retryable"); any bad
    ASSAY_STORAGE_* value crashed at import. Values are now checked on first use, naming the variable."""

    @pytest.mark.parametrize(("name", "value", "accepted"), BAD_SETTINGS)
    def test_bad_value_is_a_spec_error_naming_the_variable(self, monkeypatch, name, value, accepted):
        monkeypatch.setenv(name, value)
        with pytest.raises(SpecError) as caught:
            storage.read_bytes("s3://b/k")
        assert f"{name} is not valid" in str(caught.value) and accepted in str(caught.value)
        assert repr(value) not in str(caught.value)  # never the value: it may come from a Secret
        assert not caught.value.retryable

    def test_good_values_are_taken(self, monkeypatch):
        for k, v in {"ASSAY_STORAGE_RETRIES": "1", "ASSAY_STORAGE_RETRY_DELAY": "0",
                     "ASSAY_STORAGE_DEADLINE": "30", "ASSAY_STORAGE_MULTIPART_THRESHOLD": "8M",
                     "ASSAY_S3_ADDRESSING_STYLE": "path"}.items():
            monkeypatch.setenv(k, v)
        cfg = storage.settings()
        got = (cfg.retries, cfg.retry_delay, cfg.deadline, cfg.multipart_threshold, cfg.addressing_style)
        assert got == (1, 0.0, 30.0, 8 << 20, "path")

    def test_cli_exit_3_with_a_message_and_import_never_fails(self, tmp_path):
        env = {"ASSAY_STORAGE_RETRIES": "0"}
        done = subprocess.run([sys.executable, "-c", "import assay.storage, assay.cli.main"],
                              env={**os.environ, **env}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        done = _cli("dataset", "list", "--store", "s3://b/store", env=env)
        print(f"\nASSAY_STORAGE_RETRIES=0 assay dataset list -> exit {done.returncode}: "
              f"{done.stderr.strip()}")
        assert done.returncode == 3 and "Traceback" not in done.stderr
        assert "ASSAY_STORAGE_RETRIES is not valid" in done.stderr and "hint:" in done.stderr


def test_redact_hides_credentials_in_urls():
    assert storage.redact("at http://alice:s3cr3t@minio:9000/b/k") == "at http://***@minio:9000/b/k"
    text = '"https://key@h/x" and http://plain:9000'
    assert storage.redact(text) == '"https://***@h/x" and http://plain:9000'
