"""docker/ for real: the images built and the SYSU compose deployment run on a Docker engine.

The engine is installed and started by the tests when missing (`make docker-test`; stopped
again if they started it). The images are built (docker/build_local_images.sh: a Debian
stand-in for Flower's base images, torch from this machine's wheels), the SYSU compose
deployment runs two rounds in containers on an internal network, then TLS + SuperNode
authentication with an unregistered site and a site container killed mid-round; everything
is removed afterwards. The compose files' checks without an engine are tests/test_docker.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker_stack
import pytest

ROOT = docker_stack.ROOT
SYSU_SITES = docker_stack.SYSU_SITES
FLOWER_ENTRYPOINTS = docker_stack.FLOWER_ENTRYPOINTS

# --------------------------------------------------------------------------- real containers
# The images built here (docker/build_local_images.sh: a Debian stand-in for Flower's base
# images) and the SYSU compose deployment run for real on a Docker engine, on a compose
# network that is internal (compose.isolated.yml): containers reach each other, nothing else.

# The container tests build multi-GB images and run the federation in containers: `make test`
# and `make docker-test` switch them on (PPA_CONTAINER_TESTS=1), a plain `pytest` leaves them out.
ENGINE_MISSING = (
    docker_stack.engine_available()
    if os.environ.get("PPA_CONTAINER_TESTS") == "1"
    else "container tests run with `make test` or `make docker-test` (PPA_CONTAINER_TESTS=1)"
)
needs_engine = pytest.mark.skipif(ENGINE_MISSING is not None, reason=ENGINE_MISSING or "")
# Seconds: image build from a cold cache; one compose deployment's run; a container's start.
BUILD_TIMEOUT_S = 3600
RUN_TIMEOUT_S = 1500
HEALTHY_TIMEOUT_S = 300
# pytest-timeout of a container test: it may build the images from a cold cache first.
CONTAINER_TEST_TIMEOUT_S = BUILD_TIMEOUT_S + 2 * RUN_TIMEOUT_S
# Every test here needs the engine and may build the images from a cold cache first.
pytestmark = [
    needs_engine,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(CONTAINER_TEST_TIMEOUT_S),
]
SITE_SERVICES = [f"site-{s}" for s in SYSU_SITES]
SERVER_SERVICES = ["superlink", "serverapp"]
OUT = ROOT / "outputs" / "docker"  # logs and measurements of the container tests
# A small synthetic SYSU-MM01 and a tiny model at small inputs: every override is a real key.
CONTAINER_OVERRIDES = [
    "dataset.root=/data/sysu",
    "input.height=64",
    "input.width=32",
    "federation.local_epochs=1",
    "federation.evaluate_every=1",
    "federation.min_available_sites=6",
    "federation.min_train_sites=6",
    "telemetry.enabled=true",
    "telemetry.host=0.0.0.0",
]


@pytest.fixture(scope="module")
def engine():
    """A Docker engine: the running one, or dockerd started here and stopped at the end."""
    if ENGINE_MISSING is not None:
        pytest.skip(ENGINE_MISSING)
    started = docker_stack.start_engine()
    yield started
    if started:
        docker_stack.stop_engine()


@pytest.fixture(scope="module")
def images(engine) -> dict[str, object]:
    """The project images (and stand-in bases), built unless BuildKit's cache has them."""
    start = time.monotonic()
    steps = docker_stack.build_images(BUILD_TIMEOUT_S)
    built = {
        "steps_s": steps,
        "total_s": round(time.monotonic() - start),
        "sizes": {
            name: docker_stack.image_size(name)
            for name in (
                "ppa-fedreid/superlink:0.1.0",
                "ppa-fedreid/serverapp:0.1.0",
                "ppa-fedreid/site:0.1.0",
                docker_stack.LOCAL_FLWR,
                docker_stack.LOCAL_PROMETHEUS,
            )
        },
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "build.json").write_text(json.dumps(built, indent=2))
    return built


@pytest.fixture(scope="module")
def sysu_sites() -> dict[str, Path]:
    """A small synthetic SYSU-MM01 and one root per camera site (ppa/data/site_roots.py),
    under outputs/ (the containers' user must be able to traverse the path)."""
    from ppa.data.site_roots import write_sysu_site_roots
    from ppa.synthetic.writer import write_synthetic_sysu

    base = OUT / "data"
    if base.exists():
        shutil.rmtree(base)
    write_synthetic_sysu(
        base / "sysu",
        num_train_ids=16,
        num_val_ids=4,
        num_test_ids=8,
        images_per_camera=4,
        image_height=64,
        image_width=32,
        camera_coverage=0.9,
        seed=0,
    )
    roots = write_sysu_site_roots(base / "sysu", base / "sites")
    for path in [base, *base.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return {"sysu": base / "sysu", **roots}


def container_env(sysu_sites: dict[str, Path], tmp: Path, *, tls: bool) -> dict[str, str]:
    """Variables of compose.yml (+ tls, isolated) for one test deployment."""
    control = tmp / "control"
    control.mkdir()
    certs = tmp / "certs"
    certs.mkdir(exist_ok=True)
    security = 'root-certificates = "/certs/ca.crt"' if tls else "insecure = true"
    (control / "config.toml").write_text(
        f'[superlink]\ndefault = "{docker_stack.CONNECTION}"\n\n'
        f'[superlink.{docker_stack.CONNECTION}]\naddress = "superlink:9091"\n{security}\n'
    )
    docker_stack.chown_tree(control)
    tmp.chmod(0o755)
    env = {
        "PPA_SYSU_ROOT": str(sysu_sites["sysu"]),
        "PPA_CONTROL_HOME": str(control),
        "PPA_CERTS_DIR": str(certs),
        "PPA_PROMETHEUS_IMAGE": docker_stack.LOCAL_PROMETHEUS,
        # The SuperLink's state in memory: on a host this busy, its SQLite file's 5 s lock
        # timeout expired while six sites pushed their updates at once, and a reply was lost.
        "SUPERLINK_DATABASE": ":flwr-in-memory:",
        # Six sites share this host's cores.
        "PPA_SITE_CPUS": f"{len(os.sched_getaffinity(0)) / len(SYSU_SITES):.2f}",
    }
    for site in SYSU_SITES:
        env[f"PPA_{site.upper()}_DATA"] = str(sysu_sites[site])
    return env


def run_config(*overrides: str) -> str:
    joined = " ".join([*CONTAINER_OVERRIDES, *overrides])
    return f'experiment="demo" overrides="{joined}" resume=false'


def submit(stack: docker_stack.ComposeStack, *overrides: str) -> int:
    answer = stack.flwr_json(
        "run", "/app/project", docker_stack.CONNECTION, "--run-config", run_config(*overrides)
    )
    run_id = int(answer["run-id"])
    stack.run_ids.append(run_id)
    return run_id


def run_status(stack: docker_stack.ComposeStack, run_id: int) -> str:
    runs = stack.flwr_json("ls", docker_stack.CONNECTION, "--run-id", str(run_id))["runs"]
    return str(runs[0]["status"])


def wait_for_run(stack: docker_stack.ComposeStack, run_id: int) -> str:
    return docker_stack.wait_until(
        lambda: (s := run_status(stack, run_id)).startswith("finished") and s,
        RUN_TIMEOUT_S,
        f"run {run_id} to finish",
        poll=10,
    )


def server_history(stack: docker_stack.ComposeStack) -> list[dict]:
    done = stack.exec(
        "serverapp", "cat", "/app/project/outputs/demo/latest/history.json", check=False
    )
    return json.loads(done.stdout)["rounds"] if done.returncode == 0 else []


def wait_healthy(stack: docker_stack.ComposeStack, services: list[str]) -> None:
    states: dict[str, str] = {}

    def all_healthy() -> bool:
        states.update({s: stack.health(s) for s in services})
        return set(states.values()) == {"healthy"}

    try:
        docker_stack.wait_until(all_healthy, HEALTHY_TIMEOUT_S, "healthy containers", poll=5)
    except AssertionError as err:
        raise AssertionError(f"{err}: {states}") from None


def prometheus_value(stack: docker_stack.ComposeStack, query: str) -> list[dict]:
    """A PromQL query against the Prometheus container, asked from the ServerApp container."""
    script = (
        "import json, sys, urllib.parse, urllib.request; "
        "url = 'http://prometheus:9090/api/v1/query?query=' + urllib.parse.quote(sys.argv[1]); "
        "print(json.dumps(json.load(urllib.request.urlopen(url, timeout=10))['data']['result']))"
    )
    done = stack.exec("serverapp", "python", "-c", script, query)
    return json.loads(done.stdout)


def test_images_are_non_root_flower_based_and_sized(images: dict) -> None:
    for target in ("superlink", "serverapp", "site"):
        config = json.loads(
            docker_stack.run(
                [docker_stack.DOCKER, "image", "inspect", f"ppa-fedreid/{target}:0.1.0"],
                timeout=60,
            ).stdout
        )[0]["Config"]
        assert config["User"] == "49999:49999", target
        assert config["Healthcheck"]["Test"][0] == "CMD", target
        assert config["Entrypoint"][0] in FLOWER_ENTRYPOINTS, target
        # Flower's layout: the venv first on PATH.
        assert any(e.startswith("PATH=/python/venv/bin:") for e in config["Env"]), target
    sizes = images["sizes"]
    # The ServerApp and site images share every layer below the sources (torch included).
    assert abs(sizes["ppa-fedreid/serverapp:0.1.0"] - sizes["ppa-fedreid/site:0.1.0"]) < 1e6


def test_code_change_does_not_rebuild_torch(images: dict, tmp_path: Path) -> None:
    """Layer order: a changed source file, or an edit of pyproject.toml outside its
    dependency list, rebuilds only the layers after the installed dependencies."""
    probe = ROOT / "ppa" / f"_layer_probe_{os.getpid()}.py"
    probe.write_text('"""Written by a container test to change the build context."""\n')
    pyproject = ROOT / "pyproject.toml"
    original = pyproject.read_text()
    # A new comment each time: a text built before would find its layers in the cache.
    pyproject.write_text(original + f"# layer probe {uuid.uuid4()}: a tool-settings edit\n")
    try:
        start = time.monotonic()
        done = docker_stack.run(
            [
                docker_stack.DOCKER,
                "build",
                "--progress=plain",
                "-f",
                docker_stack.DOCKER_DIR / "Dockerfile",
                "--target",
                "site",
                *docker_stack.local_base_args(),
                "-t",
                f"ppa-fedreid/site:probe{os.getpid()}",
                ROOT,
            ],
            timeout=1200,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
        )
        seconds = time.monotonic() - start
    finally:
        probe.unlink()
        pyproject.write_text(original)
        docker_stack.run(
            [docker_stack.DOCKER, "rmi", f"ppa-fedreid/site:probe{os.getpid()}"],
            timeout=120,
            check=False,
        )
    log = done.stdout + done.stderr
    # Step headers: "#14 [site  7/16] RUN ..." (the stage name, the index padded to the width
    # of the count); a step that did not run prints "#14 CACHED" below its header.
    steps = dict(
        (text, number)
        for number, text in re.findall(r"^#(\d+) \[(?:\S+\s+)?\d+/\d+\] (.*)$", log, re.MULTILINE)
    )

    def cached(step: str) -> bool:
        return re.search(rf"^#{steps[step]} CACHED$", log, re.MULTILINE) is not None

    torch_steps = [s for s in steps if "torch torchvision" in s]
    deps_steps = [s for s in steps if "-r /tmp/requirements.txt" in s]
    extract = [s for s in steps if "requirements.py /tmp/pyproject.toml" in s]
    assert torch_steps and deps_steps and extract, log[-3000:]
    # pyproject.toml changed, so the stage extracting the dependency list ran again; the
    # list it wrote is the same, so neither install step ran.
    assert not cached(extract[0]), log[-3000:]
    for step in torch_steps + deps_steps:
        assert cached(step), log[log.index(step) :][:500]
    assert "COPY ppa ./ppa" in log
    (OUT / "rebuild_after_code_change.json").write_text(json.dumps({"seconds": round(seconds)}))


def test_sysu_federation_in_containers_two_rounds(
    images: dict, sysu_sites: dict[str, Path], tmp_path: Path
) -> None:
    """compose.yml for real: SuperLink, ServerApp, six sites (each its own camera only, read
    only), Prometheus; two rounds with central evaluation; torn down with its volumes."""
    env = container_env(sysu_sites, tmp_path, tls=False)
    files = ["compose.yml", "compose.isolated.yml"]
    timings: dict[str, float] = {}
    with docker_stack.ComposeStack(files, env, OUT / "logs") as stack:
        start = time.monotonic()
        stack.up(*SERVER_SERVICES, *SITE_SERVICES, "prometheus")
        wait_healthy(stack, SERVER_SERVICES + SITE_SERVICES)
        timings["up_to_healthy_s"] = time.monotonic() - start
        network = stack.inspect("superlink")["NetworkSettings"]["Networks"]
        assert len(network) == 1
        net = json.loads(
            docker_stack.run(
                [docker_stack.DOCKER, "network", "inspect", next(iter(network))], timeout=60
            ).stdout
        )[0]
        assert net["Internal"] is True

        for site in SYSU_SITES:
            service = f"site-{site}"
            assert stack.exec(service, "id", "-u").stdout.strip() == "49999", service
            listing = stack.exec(service, "find", "/data", "-maxdepth", "2").stdout.split()
            # Its own camera, the identity split files and its keypoints: nothing else.
            assert sorted(listing) == sorted(
                [
                    "/data",
                    "/data/sysu",
                    f"/data/sysu/{site}",
                    "/data/sysu/exp",
                    "/data/sysu/keypoints.npz",
                ]
            ), (service, listing)
            others = stack.exec(
                service, "sh", "-c", "find /data -path '*/cam*' | grep -v /" + site + " || true"
            ).stdout.split()
            assert others == [], (service, others)
            cams = stack.exec(
                service,
                "python",
                "-c",
                "import numpy as np; print(sorted({p.split('/')[0] for p in "
                "np.load('/data/sysu/keypoints.npz')['paths']}))",
            ).stdout.strip()
            assert cams == f"['{site}']", (service, cams)
            written = stack.exec(service, "touch", "/data/sysu/x", check=False)
            assert written.returncode != 0  # read-only
            assert stack.inspect(service)["HostConfig"]["NanoCpus"] > 0  # its CPU share

        start = time.monotonic()
        run_id = submit(stack, "federation.rounds=2")
        status = wait_for_run(stack, run_id)
        timings["run_s"] = time.monotonic() - start
        assert status == "finished:completed", stack.logs("serverapp")[-4000:]
        rounds = server_history(stack)
        assert [r["round"] for r in rounds] == [0, 1, 2]
        for record in rounds[1:]:
            assert sorted(record["replied"]) == sorted(SYSU_SITES)
            assert record["failed"] == []
            for protocol in ("raw-raw", "anon-anon"):
                assert 0.0 < record["central"][protocol]["mAP"] <= 1.0, record["central"]
                assert 0.0 <= record["central"][protocol]["rank1"] <= 1.0
        throughput = {
            site: rounds[2]["sites"][site]["images-per-second"] for site in sorted(SYSU_SITES)
        }
        # Each site's ClientApp sizes torch's pool from its container's CPU quota: 1 thread.
        probe = "import torch; from ppa.cpu_threads import apply_share; print(apply_share())"
        for site in SYSU_SITES:
            assert stack.exec(f"site-{site}", "python", "-c", probe).stdout.strip() == "1", site
        # Prometheus scraped the ServerApp's metrics over the compose network.
        scraped = docker_stack.wait_until(
            lambda: prometheus_value(stack, "max_over_time(ppa_current_round[1h])"),
            60,
            "Prometheus to hold ppa_current_round",
        )
        assert float(scraped[0]["value"][1]) >= 1
        # Over a window: once the run ends, its metrics endpoint goes away and the series
        # turn stale, so an instant query would find nothing.
        protocols = prometheus_value(
            stack, "count(max_over_time(ppa_central_map_ratio[1h])) by (protocol)"
        )
        assert sorted(p["metric"]["protocol"] for p in protocols) == ["anon-anon", "raw-raw"]
    (OUT / "compose_sysu_run.json").write_text(
        json.dumps({"timings_s": timings, "images_per_second": throughput}, indent=2)
    )
    left = docker_stack.run(
        [
            docker_stack.DOCKER,
            "ps",
            "-aq",
            "--filter",
            f"label=com.docker.compose.project={stack.project}",
        ],
        timeout=60,
    ).stdout.split()
    assert left == []
    volumes = docker_stack.run(
        [
            docker_stack.DOCKER,
            "volume",
            "ls",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={stack.project}",
        ],
        timeout=60,
    ).stdout.split()
    assert volumes == []


# One rerun, as for the loopback kill test (tests/test_deployment_app.py): a kill is timed
# against processes on a busy host, and the two failures seen in twelve runs had different
# causes (docker/README.md); a failure that repeats is reported in full with both logs kept.
@pytest.mark.flaky(reruns=1)
def test_tls_auth_refuses_unknown_key_and_a_killed_site_rejoins(
    images: dict, sysu_sites: dict[str, Path], tmp_path: Path
) -> None:
    """compose.yml + compose.tls.yml for real: five sites registered, cam6's key never; cam6
    is refused and the run goes on without it. Then a fault: cam2's container is killed while
    it trains round 1; round 1 completes without it (after the round timeout), the restarted
    container rejoins and trains round 2."""
    env = container_env(sysu_sites, tmp_path, tls=True)
    certs = Path(env["PPA_CERTS_DIR"])
    docker_stack.run(
        ["bash", ROOT / "scripts/make_certs.sh", "-o", certs, *SYSU_SITES], timeout=120
    )
    docker_stack.chown_tree(certs)
    registered = [s for s in SYSU_SITES if s != "cam6"]
    files = ["compose.yml", "compose.tls.yml", "compose.isolated.yml"]
    with docker_stack.ComposeStack(files, env, OUT / "logs") as stack:
        stack.up(*SERVER_SERVICES)
        wait_healthy(stack, SERVER_SERVICES)
        node_ids = {}
        for site in registered:
            answer = stack.flwr_json(
                "supernode", "register", f"/certs/supernodes/{site}.pub", docker_stack.CONNECTION
            )
            node_ids[site] = int(answer["node-id"])
        stack.up(*SITE_SERVICES)
        wait_healthy(stack, [f"site-{s}" for s in registered])

        def online() -> set[int]:
            nodes = stack.flwr_json("supernode", "list", docker_stack.CONNECTION)["nodes"]
            return {int(n["node-id"]) for n in nodes if n["status"] == "online"}

        docker_stack.wait_until(
            lambda: online() == set(node_ids.values()), HEALTHY_TIMEOUT_S, "five sites online"
        )
        rogue = stack.logs("site-cam6")
        assert "Failed to activate SuperNode" in rogue, rogue[-3000:]
        assert "No SuperNode found with the given public key" in stack.logs("superlink")

        killed = stack.container("site-cam2")
        # Killed while its ClientApp process runs (round 1's task arrived, no reply sent yet).
        # Not from the SuperNode's log: its lines can reach the container log late, and a kill
        # during the reply's upload is another fault (Flower then spends minutes retrying the
        # pull of the half-pushed reply before it gives up on it). Watched from before the
        # submission returns: once, on a busy host, cam2 had already sent its round-1 reply
        # when the watch began after `flwr run` (a docker-compose run of the control
        # container, seconds per call) had returned.
        with ThreadPoolExecutor(max_workers=1) as pool:
            submitted = pool.submit(
                submit,
                stack,
                "federation.rounds=2",
                "federation.min_available_sites=5",
                "federation.min_train_sites=4",
                "federation.round_timeout=60",
            )

            def cam2_training() -> bool:
                if submitted.done() and submitted.exception() is not None:
                    raise submitted.exception()  # the submission failed: its error
                return docker_stack.runs_program(killed, "flwr-clientapp")

            what = "cam2's ClientApp to work on its round-1 task"
            docker_stack.wait_until(cam2_training, RUN_TIMEOUT_S, what, poll=0.5)
            docker_stack.run([docker_stack.DOCKER, "kill", killed], timeout=60)
            run_id = submitted.result()
        assert not server_history(stack)[1:]  # round 1 was not finished when the site died
        docker_stack.run([docker_stack.DOCKER, "start", killed], timeout=60)
        status = wait_for_run(stack, run_id)
        assert status == "finished:completed", stack.logs("serverapp")[-4000:]
        rounds = {r["round"]: r for r in server_history(stack)}
        cam6_log = stack.logs("site-cam6")
    assert sorted(rounds) == [0, 1, 2]
    assert "cam2" not in rounds[1]["replied"]  # round 1 completed without the dead site
    assert sorted(rounds[1]["replied"]) == ["cam1", "cam3", "cam4", "cam5"]
    # The restarted container rejoined.
    assert "cam2" in rounds[2]["replied"], {k: v for k, v in rounds[2].items() if k != "sites"}
    assert all("cam6" not in r.get("replied", []) for r in rounds.values())
    assert "Start `flwr-clientapp`" not in cam6_log  # never got a task
    for record in (rounds[1], rounds[2]):
        assert 0.0 < record["central"]["raw-raw"]["mAP"] <= 1.0
