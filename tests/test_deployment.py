"""Deployment launcher pieces (ppa-deploy, ppa.launch.deployment) and credentials (make_certs.sh).

Fast tests: site layout and node-config rendering, run-config files, the command line's
validation, process-tree shutdown, and the certificates/keys checked with openssl and the
cryptography package Flower itself uses. Real Flower processes: test_deployment_engine.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ppa.launch.deployment import Deployment, DeploymentSettings
from ppa.launch.flower_config import build_run_config, format_config_args, write_flat_toml
from ppa.launch.processes import ManagedProcess, free_port, health_ok
from ppa.launch.proctree import proc_stat
from ppa.launch.sites import parse_site, site_layout, sites_from_config
from ppa.node_config import SiteSpec

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "ppa-deploy"  # the console script (pip install -e .)
MAKE_CERTS = ROOT / "scripts" / "make_certs.sh"


# --------------------------------------------------------------------------- sites


def test_sysu_by_camera_layout_is_six_camera_sites() -> None:
    assert site_layout("sysu", "by_camera") == [
        ("cam1", "visible"),
        ("cam2", "visible"),
        ("cam3", "infrared"),
        ("cam4", "visible"),
        ("cam5", "visible"),
        ("cam6", "infrared"),
    ]


def test_regdb_and_other_partitions_layouts() -> None:
    assert site_layout("regdb", "by_camera") == [
        ("thermal", "infrared"),
        ("visible", "visible"),
    ]
    assert site_layout("sysu", "by_modality") == [
        ("infrared", "infrared"),
        ("visible", "visible"),
    ]
    assert site_layout("regdb", "by_identity", 2) == [
        ("infrared-0", "infrared"),
        ("infrared-1", "infrared"),
        ("visible-0", "visible"),
        ("visible-1", "visible"),
    ]
    with pytest.raises(ValueError, match="partition strategy"):
        site_layout("sysu", "by_weather")
    with pytest.raises(ValueError, match="protocol must be one of"):
        site_layout("market1501", "by_camera")
    with pytest.raises(ValueError, match="sites_per_modality"):
        site_layout("sysu", "by_identity", 0)


@pytest.mark.parametrize(
    ("protocol", "strategy"),
    [("regdb", "by_camera"), ("regdb", "by_modality"), ("regdb", "by_identity")],
)
def test_layout_names_match_the_partitioner(protocol: str, strategy: str, tmp_path: Path) -> None:
    """The launcher names sites without reading data; the ClientApp's partitioner reads the
    data: both must agree, or a SuperNode would ask for a site that does not exist."""
    from ppa.data import regdb
    from ppa.data.partition import partition_sites
    from ppa.synthetic.writer import write_synthetic_regdb

    write_synthetic_regdb(
        tmp_path / "regdb",
        num_ids=8,
        images_per_modality=2,
        image_height=32,
        image_width=16,
        seed=0,
    )
    sites = partition_sites(
        regdb.load_train_set(tmp_path / "regdb", trial=1),
        strategy,
        protocol=protocol,
        sites_per_modality=2,
    )
    assert [(s.name, s.modality.value) for s in sites] == site_layout(protocol, strategy, 2)


def test_sites_from_config_use_the_dataset_root(tmp_path: Path) -> None:
    from ppa.config import load_config

    cfg = load_config(["experiment=demo", "dataset=synthetic_regdb"])
    sites = sites_from_config(cfg, tmp_path)
    assert [(s.name, s.modality, s.dataset) for s in sites] == [
        ("thermal", "infrared", "regdb"),
        ("visible", "visible", "regdb"),
    ]
    assert {s.data_root for s in sites} == {tmp_path / "data" / "synthetic_regdb"}


def test_parse_site_spec(tmp_path: Path) -> None:
    site = parse_site("cam3:ir", dataset="sysu", default_root=Path("/data/sysu"), workdir=tmp_path)
    assert site == SiteSpec.deployed("cam3", "infrared", Path("/data/sysu"), "sysu")
    relative = parse_site(
        "cam1:rgb:sites/cam1", dataset="sysu", default_root=Path("/x"), workdir=tmp_path
    )
    assert relative.data_root == tmp_path / "sites" / "cam1"
    assert relative.modality == "visible"
    for bad, message in [
        ("cam1", "NAME:MODALITY"),
        (":visible", "NAME:MODALITY"),
        ("cam1:sonar", "unknown modality"),
        ("a b:visible", "spaces"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_site(bad, dataset="sysu", default_root=Path("/x"), workdir=tmp_path)


def test_node_config_string_is_what_flower_parses() -> None:
    from flwr.common.config import parse_config_args

    site = SiteSpec.deployed("cam3", "infrared", Path("/data/with space/sysu"), "sysu")
    text = format_config_args(site.node_config())
    assert text == (
        'site="cam3" modality="infrared" data-root="/data/with space/sysu" dataset="sysu"'
    )
    # flower-supernode hands --node-config to this parser.
    assert parse_config_args([text]) == site.node_config()
    assert format_config_args({"k": 3, "b": True}) == "k=3 b=true"
    with pytest.raises(ValueError, match="cannot carry"):
        format_config_args({"data-root": '/data/"quoted"'})
    with pytest.raises(ValueError, match="key"):
        format_config_args({"bad key": "x"})


def test_run_config_file_round_trips(tmp_path: Path) -> None:
    config = build_run_config("demo", ["model=tiny", "federation.rounds=2"], True)
    assert config == {
        "experiment": "demo",
        "overrides": "model=tiny federation.rounds=2",
        "resume": True,
    }
    path = write_flat_toml(tmp_path / "run.toml", {**config, "path": 'C:\\odd "name"', "n": 3})
    assert tomli.loads(path.read_text()) == {**config, "path": 'C:\\odd "name"', "n": 3}
    with pytest.raises(ValueError, match="whitespace"):
        build_run_config("demo", ["dataset.root=/a b"], False)


# --------------------------------------------------------------------------- command line


def run_launcher(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def test_cli_rejects_a_missing_data_root_before_starting_anything(tmp_path: Path) -> None:
    done = run_launcher(
        "--workdir",
        str(tmp_path),
        "--output-dir",
        str(tmp_path / "out"),
        "dataset=synthetic_regdb",
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "data root of site 'thermal' does not exist" in done.stderr
    assert str(tmp_path / "data" / "synthetic_regdb") in done.stderr
    assert not (tmp_path / "out").exists()


def test_cli_rejects_bad_overrides_and_duplicate_sites(tmp_path: Path) -> None:
    bad_key = run_launcher("--workdir", str(tmp_path), "federation.no_such_key=1", cwd=tmp_path)
    assert bad_key.returncode == 2
    assert "no_such_key" in bad_key.stderr
    duplicate = run_launcher(
        "--workdir",
        str(tmp_path),
        "--no-data-check",
        "--site",
        "cam1:visible",
        "--site",
        "cam1:infrared",
        cwd=tmp_path,
    )
    assert duplicate.returncode == 2
    assert "repeated: cam1" in duplicate.stderr
    rounds = run_launcher("--workdir", str(tmp_path), "--rounds", "0", cwd=tmp_path)
    assert rounds.returncode == 2 and "--rounds must be >= 1" in rounds.stderr


def test_auth_without_tls_is_refused_by_the_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs TLS"):
        DeploymentSettings(output_dir=tmp_path, auth=True, tls=False)


@pytest.mark.parametrize("persistent", [False, True])
def test_superlink_state_is_in_memory_unless_a_file_is_asked_for(
    persistent: bool, tmp_path: Path
) -> None:
    """Six sites pushing at once make flwr's SQLite state drop replies; the file is opt-in."""
    settings = DeploymentSettings(output_dir=tmp_path, persistent_state=persistent)
    with Deployment(settings) as deployment:
        superlink = deployment.start_superlink()
        answer = deployment.flwr_json("ls", deployment.connection)  # the state answers
        assert answer["runs"] == []
        database = superlink.argv[superlink.argv.index("--database") + 1]
        assert (database == str(deployment.state_db)) is persistent
        assert deployment.state_db.exists() is persistent
    assert not superlink.running()


# --------------------------------------------------------------------------- processes


def test_stop_ends_the_whole_tree_including_new_sessions(tmp_path: Path) -> None:
    """Flower starts helpers in new sessions; stop() must reach them, by PID."""
    pids = tmp_path / "pids"
    code = (
        "import os, subprocess, sys, time\n"
        "a = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "b = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],"
        " start_new_session=True)\n"
        f"open({str(pids)!r}, 'w').write(f'{{a.pid}} {{b.pid}}')\n"
        "time.sleep(300)\n"
    )
    process = ManagedProcess(
        "tree", [sys.executable, "-c", code], tmp_path / "tree.log", dict(os.environ)
    ).start()
    deadline = time.monotonic() + 30
    while not (pids.exists() and pids.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    children = [int(p) for p in pids.read_text().split()]
    started = time.monotonic()
    process.stop(grace=10)
    assert time.monotonic() - started < 10  # SIGTERM sufficed
    assert process.returncode == -signal.SIGTERM
    for pid in children:
        stat = proc_stat(pid)
        assert stat is None or stat[0] == "Z", f"child {pid} survived"


def test_stop_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    # The marker is split in the source: the log's first line repeats the command.
    code = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ign' 'oring', flush=True)\ntime.sleep(300)\n"
    )
    process = ManagedProcess(
        "stubborn", [sys.executable, "-c", code], tmp_path / "stubborn.log", dict(os.environ)
    ).start()
    deadline = time.monotonic() + 30
    while "ignoring" not in process.log_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.stop(grace=1)
    assert process.returncode == -signal.SIGKILL


def test_health_check_is_not_fooled_by_another_listener() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        assert health_ok("127.0.0.1", other.getsockname()[1], None, timeout=0.5) is False
    assert health_ok("127.0.0.1", free_port(), None, timeout=0.5) is False


# --------------------------------------------------------------------------- credentials


def make_certs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(MAKE_CERTS), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_make_certs_writes_a_ca_a_server_certificate_and_node_keys(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    done = make_certs(
        "-o", str(out), "-s", "DNS:link.example.org", "-s", "IP:10.0.0.5", "cam1", "cam3"
    )
    assert done.returncode == 0, done.stderr
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "server.crt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0 and "OK" in verify.stdout

    cert = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {
        "localhost",
        "superlink",
        "link.example.org",
    }
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "::1",
        "10.0.0.5",
    }
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage

    for name in ("cam1", "cam3"):
        # The formats Flower reads: OpenSSH private key, OpenSSH public key, NIST P-384.
        key = serialization.load_ssh_private_key((out / "supernodes" / name).read_bytes(), None)
        public = serialization.load_ssh_public_key(
            (out / "supernodes" / f"{name}.pub").read_bytes()
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP384R1)
        assert key.public_key().public_numbers() == public.public_numbers()
        assert (out / "supernodes" / name).stat().st_mode & 0o077 == 0
    for secret in ("ca.key", "server.key", "superexec.secret"):
        assert (out / secret).stat().st_mode & 0o077 == 0, secret
    assert len((out / "superexec.secret").read_bytes()) == 64


def test_make_certs_keeps_existing_files_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert make_certs("-o", str(out), "cam1").returncode == 0
    before = {p.name: p.read_bytes() for p in (out / "ca.crt", out / "supernodes" / "cam1")}
    again = make_certs("-o", str(out), "cam1", "cam2")
    assert again.returncode == 0
    assert "ca.crt" not in again.stdout and "cam2" in again.stdout
    assert (out / "ca.crt").read_bytes() == before["ca.crt"]
    assert (out / "supernodes" / "cam1").read_bytes() == before["cam1"]
    assert make_certs("-f", "-o", str(out), "cam1").returncode == 0
    assert (out / "ca.crt").read_bytes() != before["ca.crt"]
    assert (out / "supernodes" / "cam1").read_bytes() != before["cam1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-d", "zero"], "positive number of days"),
        (["-s", "example.org"], "DNS:<name> or IP:<address>"),
        (["bad/name"], "invalid SuperNode name"),
        (["-x"], "unknown option"),
    ],
)
def test_make_certs_rejects_bad_arguments(args: list[str], message: str, tmp_path: Path) -> None:
    done = make_certs("-o", str(tmp_path / "certs"), *args)
    assert done.returncode == 2
    assert message in done.stderr
