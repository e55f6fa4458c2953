"""Secrets never reach an artifact: planted everywhere, found nowhere.

Distinct secrets are planted in every place a runbook can see them (the
environment, DSNs, Kubernetes Secrets, pod log lines, exception messages,
parameters) and every byte a run writes is searched for them: the
notebook, its HTML, verdict.json, parameters.yaml, the members of the
diagnostic bundle, the log records and what the command printed.
"""

import io
import json
import logging
import secrets
import zipfile

import nbformat
import pytest
from tiny_runbooks import write_runbooks, write_target

from paracle_nb import cli, run
from paracle_nb.redact import Scrubber, marker, protect_logs, scrub_notebook
from paracle_nb.sandbox import procs
from paracle_nb.secrets import (
    environment_secrets,
    kubeconfig_secrets,
    secret_object_values,
)


def _planted(kind):
    """A distinct value per test session, so a hit can only be a leak."""
    return f"{kind}{secrets.token_hex(8)}"


def every_byte(folder):
    """Yield (name, bytes) of every file under ``folder``, zip members opened."""
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        yield str(path), data
        if path.suffix == ".zip":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for member in archive.namelist():
                    yield f"{path}!{member}", archive.read(member)


def hits(folder, planted, *texts):
    """Return where any planted value appears in the files or the texts."""
    found = [(name, value) for name, data in every_byte(folder)
             for value in planted if value.encode() in data]
    found += [("text", value) for text in texts for value in planted
              if value in text]
    return found


# -- the runner, on a tiny runbook that shows a secret every way it can ----

@pytest.mark.notebook
def test_every_output_kind_is_scrubbed(tmp_path, monkeypatch, caplog, capsys):
    token, env_token = _planted("tok-"), _planted("env-")
    monkeypatch.setenv("PARACLE_NB_NOTEBOOKS", str(write_runbooks(tmp_path)))
    monkeypatch.setenv("PARACLE_TINY_TOKEN", env_token)
    target = write_target(tmp_path / "target.yaml", procs.free_port())
    artifacts = tmp_path / "artifacts"

    with caplog.at_level(logging.DEBUG):
        code = cli.main(["run", "tiny/shows-secrets", "--parameters", str(target),
                         "-p", "api_token", token, "--artifacts", str(artifacts)])
    printed = capsys.readouterr()

    assert code == cli.EXIT_FAILED  # the last step raises, quoting the token
    assert not hits(artifacts, [token, env_token], caplog.text, printed.out,
                    printed.err)
    [folder] = artifacts.iterdir()
    notebook = nbformat.read(folder / "shows-secrets.ipynb", as_version=4)
    outputs = json.dumps([c.get("outputs") for c in notebook.cells])
    # Each kind still shows where the token was, by fingerprint.
    for kind in ("stream", "display_data", "execute_result", "error"):
        assert kind in outputs
    assert outputs.count(marker(token)) >= 6
    assert marker(env_token) in outputs
    assert notebook.metadata.papermill.parameters.api_token == marker(token)
    kernel_log = (folder / "kernel.log").read_text()
    assert marker(token) in kernel_log and marker(env_token) in kernel_log
    assert marker(token) in (folder / "shows-secrets.html").read_text()
    assert marker(token) in json.loads((folder / "verdict.json").read_text())[
        "findings"][0]["summary"]


def test_log_records_of_every_logger_are_scrubbed(caplog):
    password = _planted("pw-")
    protect_logs(password)
    with caplog.at_level(logging.INFO):
        logging.getLogger("some.library").info("connecting with %s", password)
        try:
            raise ValueError(f"refused {password}")
        except ValueError:
            logging.getLogger("other").exception("failed")
        logging.getLogger("x").info("Authorization: Bearer abcdefgh12345678")

    assert password not in caplog.text
    assert caplog.text.count(marker(password)) == 2
    assert "abcdefgh12345678" not in caplog.text


@pytest.mark.parametrize("text", [
    "secret_name: paracle-secrets",
    "max_tokens: 4096, tokens=512",
    "secretKeyRef: paracle-secrets/DATABASE_URL",
    "postgres_password_file: /run/secrets/pg",
])
def test_names_that_only_mention_secrets_are_left_alone(text):
    assert Scrubber().text(text) == text


@pytest.mark.parametrize("text, secret", [
    ("CLIENT_SECRET=abcd-1234-efgh", "abcd-1234-efgh"),
    ("x-api-key: k3y-value-99", "k3y-value-99"),
    ("SECRET_KEY='django-insecure-xyz'", "django-insecure-xyz"),
    ("auth_token=0123456789", "0123456789"),
])
def test_values_named_as_credentials_are_scrubbed(text, secret):
    assert Scrubber().text(text) == text.replace(secret, marker(secret))


def test_notebook_scrub_covers_outputs_parameters_and_metadata():
    key = "sk-ant-api03-" + _planted("")
    nb = nbformat.v4.new_notebook()
    injected = nbformat.v4.new_code_cell(f'api_key = "{key}"')
    injected.metadata["tags"] = ["injected-parameters"]
    shown = nbformat.v4.new_code_cell("show()", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=key),
        nbformat.v4.new_output("display_data", data={
            "text/html": f"<td>{key}</td>", "text/plain": key,
            "application/json": {"nested": [key]}, "image/png": "iVBORw0KGgo="}),
        nbformat.v4.new_output("error", ename="AuthError", evalue=key,
                               traceback=[f"\x1b[31mAuthError\x1b[0m: {key}"]),
    ])
    nb.cells = [injected, shown]
    nb.metadata["papermill"] = {"parameters": {"api_key": key, "secret": "s"}}

    scrub_notebook(nb, Scrubber())

    assert key not in json.dumps(nb)
    assert nb.metadata.papermill.parameters == {"api_key": marker(key),
                                                "secret": "s"}
    assert nb.cells[1].outputs[1].data["image/png"] == "iVBORw0KGgo="


def test_credentials_are_found_in_env_kubeconfig_and_secret_objects(tmp_path):
    env = {"PARACLE_API_TOKEN": "tok-123456", "DATABASE_URL":
           "postgresql://app:dbpass99@db/paracle", "HOME": "/root",
           "PARACLE_POSTGRES_PASSWORD_FILE": "/run/pw"}
    assert environment_secrets(env) == [
        "tok-123456", "postgresql://app:dbpass99@db/paracle", "dbpass99"]

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "users:\n- name: u\n  user:\n    token: kube-token-1\n"
        "    client-key-data: a2V5LWRhdGE=\n"
        "- name: oidc\n  user:\n    auth-provider:\n      config:\n"
        "        id-token: id-tok-2\n        client-secret: cs-3\n")
    assert set(kubeconfig_secrets(kubeconfig)) == {
        "kube-token-1", "a2V5LWRhdGE=", "id-tok-2", "cs-3"}

    # A user name is left alone: scrubbing it would blank every line naming it.
    values = secret_object_values({"data": {"K": "c2stbGFiLWtleQ==",
                                            "DB_USER": "cGFyYWNsZQ=="},
                                   "stringData": {"S": "plain-value"}})
    assert values == ["c2stbGFiLWtleQ==", "sk-lab-key", "plain-value"]


# -- every runbook against the lab, with secrets planted everywhere --------

QUICK = {
    "api/high-latency": {"latency_window": "8s", "plot_window": "2m",
                         "sample_window": "1s", "redis_samples": 3,
                         "log_lines": 100},
    "triage": {"window": "8s"},
}


@pytest.mark.servers
@pytest.mark.notebook
def test_no_planted_secret_reaches_any_artifact(live_lab, tmp_path, monkeypatch,
                                               caplog, capfd):
    lab = live_lab
    key, anthropic = "sk-" + _planted("proj"), "sk-ant-api03-" + _planted("")
    plain, env_token = _planted("plain-"), _planted("env-")
    log_password, bearer = _planted("logpw-"), _planted("bearer")
    monkeypatch.setenv("PARACLE_WEBHOOK_TOKEN", env_token)
    # A value with no tell-tale shape: only knowing the Secret catches it.
    lab.write_secret("paracle-secrets", {"OPENAI_API_KEY": key,
                                         "ANTHROPIC_API_KEY": anthropic,
                                         "WEBHOOK_SIGNING_KEY": plain})
    _plant_log_lines(lab, key, anthropic, plain, log_password, bearer)
    sre_password = lab.postgres.password("paracle_sre")
    target = {
        # Passwords inline in the DSNs: the runner must move them out.
        "postgres_dsn": lab.postgres.dsn("paracle_sre").replace(
            "paracle_sre@", f"paracle_sre:{sre_password}@"),
        "postgres_password_file": "",
        "redis_url": lab.redis.url.replace("://", f"://:{lab.redis.password}@"),
        "redis_password_file": "",
    }
    artifacts = tmp_path / "artifacts"

    with caplog.at_level(logging.INFO):
        for name in run.runbooks():
            overrides = {**target, **QUICK.get(name, {})}
            if name == "escalation/diagnostic-bundle":
                overrides["artifacts_dir"] = str(artifacts)
            result = run.run(name, lab.parameters_file, overrides,
                             artifacts=artifacts)
            assert result.failed is None, (name, result.failed)
    printed = capfd.readouterr()

    planted = [key, anthropic, plain, env_token, log_password, bearer,
               sre_password, lab.redis.password, lab.postgres.password("paracle")]
    assert not hits(artifacts, planted, caplog.text, printed.out, printed.err)
    # The planted lines were shown, scrubbed, not merely left out.
    written = b"".join(data for _, data in every_byte(artifacts))
    for value in (key, plain, log_password, bearer):
        assert marker(value).encode() in written, value
    assert len(list(artifacts.iterdir())) == len(run.runbooks())


def _plant_log_lines(lab, key, anthropic, plain, log_password, bearer):
    """Append secret-bearing lines, a traceback among them, to every API pod."""
    lines = (
        f'level=error msg="llm auth failed" api_key={key}\n'
        f'level=error msg="webhook rejected" detail={plain}\n'
        f"level=error msg=\"db\" url=postgresql://paracle:{log_password}"
        "@postgres-primary:5432/paracle\n"
        f'level=warning msg="retry" header="Authorization: Bearer {bearer}"\n'
        "Traceback (most recent call last):\n"
        '  File "/app/llm.py", line 42, in complete\n'
        "    raise AuthenticationError(key)\n"
        f"anthropic.AuthenticationError: invalid x-api-key {anthropic}\n")
    for pod in lab.kube.store.list("pods", "paracle-prod"):
        if pod["metadata"].get("labels", {}).get("app") == "paracle-api":
            lab.kube.store.append_logs("paracle-prod", pod["metadata"]["name"],
                                       "api", lines)
