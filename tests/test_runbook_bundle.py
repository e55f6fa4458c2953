"""The escalation bundle: what the guide gathers, in one scrubbed archive."""

import json
import zipfile

import pytest

from paracle_nb import run

pytestmark = [pytest.mark.servers, pytest.mark.notebook]

PLANTED_KEY = "sk-lab-planted0123456789abcdef"
PLANTED_DSN_PASSWORD = "planted-db-pass-77"


def test_bundle_gathers_logs_state_and_verdicts_without_secrets(lab, tmp_path):
    artifacts = tmp_path / "artifacts"
    with lab.incident("crashloop-oom"):
        pod = lab.kube.store.list("pods", "paracle-prod")[0]["metadata"]["name"]
        lab.kube.store.append_logs(
            "paracle-prod", pod, "api",
            f"level=error msg=\"llm auth\" api_key={PLANTED_KEY}\n"
            f"level=error msg=\"db\" url=postgresql://paracle:{PLANTED_DSN_PASSWORD}"
            "@postgres-primary:5432/paracle\n")
        crash = run.run("api/pods-crashing", lab.parameters_file, artifacts=artifacts)
        result = run.run("escalation/diagnostic-bundle", lab.parameters_file,
                         {"artifacts_dir": str(artifacts)}, artifacts=artifacts)

    assert result.failed is None and crash.verdict.cause == "oom-killed"
    [archive_path] = result.folder.glob("diagnostic-bundle-*.zip")
    with zipfile.ZipFile(archive_path) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MANIFEST.json"))
        everything = b"".join(archive.read(n) for n in names)

    assert {"cluster/pods.yaml", "cluster/events.yaml", "verdicts.json"} <= names
    assert any(n.endswith("_api.previous.log") for n in names)
    assert {f["name"] for f in manifest["files"]} == names - {"MANIFEST.json"}
    verdicts = json.loads(archive_bytes(archive_path, "verdicts.json"))
    assert [v["cause"] for v in verdicts] == ["oom-killed"]

    for secret in (PLANTED_KEY, PLANTED_DSN_PASSWORD,
                   lab.postgres.password("paracle_sre"), lab.redis.password):
        assert secret.encode() not in everything
        for path in result.folder.iterdir():
            assert secret.encode() not in path.read_bytes()
    assert manifest["redactions"] >= 2

    finding = result.verdict.finding("diagnostic-bundle")
    assert finding.evidence["bundle"] == archive_path.name
    assert result.verdict.finding("open-problem").evidence["cause"] == "oom-killed"


def archive_bytes(path, name):
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)
