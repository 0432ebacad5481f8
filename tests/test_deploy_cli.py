"""deploy/: TLS material, component commands and the ``dualflower-deploy`` CLI (no network)."""

from __future__ import annotations

import ipaddress
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from deploy import cli
from deploy.certs import make_node_key, make_tls
from deploy.cluster import Layout, superlink_command, supernode_command


def test_superlink_certificate_has_the_sans_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    paths = make_tls(tmp_path, ["IP:10.1.2.3", "DNS:link.example"])
    cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "superlink", "link.example"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.1.2.3"),
    }
    assert stat.S_IMODE(paths["key"].stat().st_mode) == 0o600
    kept = paths["cert"].read_bytes()
    assert make_tls(tmp_path, ["DNS:link.example"])["cert"].read_bytes() == kept  # covered
    again = make_tls(tmp_path, ["IP:10.9.9.9"])  # new address: same CA, both name sets
    assert again["ca"].read_bytes() == paths["ca"].read_bytes()
    reissued = x509.load_pem_x509_certificate(again["cert"].read_bytes())
    reissued.verify_directly_issued_by(ca)
    names = reissued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"10.1.2.3", "10.9.9.9"} <= {str(a) for a in names.get_values_for_type(x509.IPAddress)}


def test_bad_san_entry_names_the_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="DNS:<name>' or 'IP:<address>"):
        make_tls(tmp_path, ["10.0.0.1"])


def test_node_keys_are_openssh_p384_and_stable(tmp_path: Path) -> None:
    private, public = make_node_key(tmp_path, "supernode-1")
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    assert key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode() == public.read_text().strip()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert make_node_key(tmp_path, "supernode-1") == (private, public)
    assert public.read_text() == make_node_key(tmp_path, "supernode-1")[1].read_text()


def test_auth_without_tls_is_refused() -> None:
    with pytest.raises(ValueError, match="needs TLS"):
        Layout(tls=False, auth=True)


def test_commands_secure_by_default_insecure_only_when_asked() -> None:
    secure = superlink_command(Layout(certs="/c"))
    assert "--insecure" not in secure and "--enable-supernode-auth" in secure
    assert secure[secure.index("--ssl-certfile") + 1] == "/c/server.pem"
    node = supernode_command(Layout(certs="/c", keys="/k", superlink="10.0.0.5"), 2, 5)
    assert node[node.index("--superlink") + 1] == "10.0.0.5:9092"
    assert "partition-id=1 num-partitions=5" in node[node.index("--node-config") + 1]
    assert node[node.index("--auth-supernode-private-key") + 1] == "/k/supernode-2"
    insecure = superlink_command(Layout(tls=False, auth=False))
    assert insecure[0] == "--insecure" and "--ssl-certfile" not in insecure


def test_cli_execs_the_component_with_the_built_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []

    def fake_exec(program: str, argv: list[str], env: dict[str, str]) -> Any:
        calls.append((program, argv, env))
        return 0

    monkeypatch.setattr(cli.os, "execvpe", fake_exec)
    cli.main(
        [
            "supernode", "--index", "3", "--num-partitions", "4", "--superlink", "link",
            "--certs", str(tmp_path), "--keys", str(tmp_path), "--data", str(tmp_path / "d"),
            "--state", str(tmp_path / "s"), "--app-port", "9097",
        ]
    )
    program, argv, env = calls[0]
    assert program == sys.executable and argv[1:3] == ["-m", "deploy.supernode_entry"]
    assert argv[argv.index("--port") + 1] == "9097"
    assert f'state-dir="{tmp_path / "s"}"' in argv[argv.index("--node-config") + 1]
    assert env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.1"
    assert env["DUALFLOWER_SUPERNODE_POLL_INTERVAL"] == "0.1"
    cli.main(["superlink", "--insecure"])
    assert calls[1][1][:2] == ["flower-superlink", "--insecure"]
    cli.main(["superlink", "--certs", str(tmp_path), "--port", "18000", "--fleet-port", "19092"])
    link = calls[2][1]
    assert link[link.index("--port") + 1] == "18000"
    assert link[link.index("--fleet-api-address") + 1] == "0.0.0.0:19092"
    assert link[link.index("--host") + 1] == "127.0.0.1"  # HTTP API on loopback by default


def test_submit_without_ca_or_insecure_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["submit", "--superlink", "10.0.0.5:8000"])
    assert done.value.code == 2
    assert "--ca" in capsys.readouterr().err


def test_register_without_keys_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dualflower-deploy certs"):
        cli.register_keys({}, tmp_path, 1, wait=0)


def test_certs_keep_ca_key_and_private_node_keys_apart(tmp_path: Path) -> None:
    out, ca, keys = tmp_path / "certs", tmp_path / "ca", tmp_path / "keys"
    nodes = [tmp_path / f"node-{i}" for i in (1, 2)]
    argv = ["certs", "--out", str(out), "--ca-dir", str(ca), "--keys", str(keys), "--nodes", "2"]
    assert cli.main([*argv, "--node-key-dirs", *map(str, nodes)]) == 0
    assert (ca / "ca.key").exists() and not (out / "ca.key").exists()
    assert sorted(p.name for p in keys.iterdir()) == ["supernode-1.pub", "supernode-2.pub"]
    for i, node in enumerate(nodes, start=1):
        assert sorted(p.name for p in node.iterdir()) == [f"supernode-{i}", f"supernode-{i}.pub"]
        public = f"supernode-{i}.pub"
        assert (node / public).read_text() == (keys / public).read_text()
    before = (out / "server.pem").read_bytes()
    assert cli.main([*argv, "--node-key-dirs", *map(str, nodes)]) == 0  # idempotent
    assert (out / "server.pem").read_bytes() == before
    with pytest.raises(SystemExit):
        cli.main([*argv, "--node-key-dirs", str(nodes[0])])


def test_superlink_database_folder_is_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(cli.os, "execvpe", lambda _p, argv, _e: calls.append(argv))
    cli.main(["superlink", "--insecure", "--database", str(tmp_path / "state" / "link.db")])
    assert (tmp_path / "state").is_dir()
    assert calls[0][calls[0].index("--database") + 1] == str(tmp_path / "state" / "link.db")


def test_failed_submission_reports_no_run_status_and_writes_beside_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "submit_run", lambda *_a: "")
    monkeypatch.chdir(tmp_path)
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "pyproject.toml", app / "pyproject.toml")
    assert cli.main(["submit", str(app), "--superlink", "127.0.0.1:8000", "--insecure"]) == 1
    assert "submission failed" in capsys.readouterr().out
    assert (app / ".flwr-deploy" / "config.toml").exists()
    assert not (tmp_path / ".flwr-deploy").exists()


def test_submitting_a_directory_without_an_app_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["submit", str(tmp_path), "--superlink", "127.0.0.1:8000", "--insecure"])
    assert code == 2
    assert "is not a dualflower app directory" in capsys.readouterr().err
    assert not (tmp_path / ".flwr-deploy").exists()


def test_a_broken_log_stream_is_reattached_until_the_run_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    fake = tmp_path / "flwr"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        'case "$1" in\n'
        '  run) echo "Successfully started run 7"; exit 1;;\n'
        f'  ls) if grep -q "^log" {calls}; then s=finished:completed; else s=running; fi\n'
        '      echo "{\\"runs\\": [{\\"run-id\\": 7, \\"status\\": \\"$s\\"}]}";;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    env = {**cli.os.environ, "PATH": f"{tmp_path}:{cli.os.environ['PATH']}"}
    monkeypatch.setattr(cli.time, "sleep", lambda _s: None)
    assert cli.submit_run(env, ["flwr", "run", "."], wait=1) == "finished:completed"
    assert [c.split()[0] for c in calls.read_text().splitlines()] == ["run", "ls", "log", "ls"]
