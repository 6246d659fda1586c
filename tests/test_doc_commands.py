"""Every shell command in README.md and docs/*.md runs, so a documented command cannot rot.

The fenced ``bash``/``sh`` blocks are extracted (continuation lines joined, comments dropped);
each block runs as one bash script (its variables carry from line to line) from the project
folder, with PPA_WORKDIR, FLWR_HOME and every output in the test's temp folder. Each command
must match a rule of `RULES`: either it runs as written plus the rule's overrides, which only
shrink it (tiny synthetic set, tiny model, one round / epoch / batch), or, when it needs what
this machine lacks (a GPU, the real dataset, the pose environment, a cluster, the internet) or
runs for tens of minutes, the rule names the reason and runs a check in its place (`--help`,
config composition, `make -n`). A command without a rule fails the test.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, TINY_INPUT
from flower_local import LocalFlower, processes_with

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell"}
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```", re.S | re.M
)
BLOCK_TIMEOUT_S = 1500  # one block; the runs below are tiny, this bounds a hung one

# Shrinks any Hydra run: the tiny synthetic set, tiny model and input, one of everything.
TINY = [
    "model=tiny",
    *TINY_INPUT,
    "dataset.test.trials=1",
    "train.num_ids=4",
    "train.num_instances=2",
    "train.num_workers=0",
    "eval.num_workers=0",
    "eval.batch_size=64",
    "eval.privacy_images=16",
    "train.warmup_epochs=0",
    "train.epochs=1",
    "train.max_batches_per_epoch=1",
    "train.checkpoint_every=0",
    "federation.rounds=1",
    "federation.local_epochs=1",
    "federation.calibrate_norm_statistics=false",
    "privacy_report.images=8",
]


# Composes a command's overrides with the project's config loader (fails on unknown keys).
COMPOSE = (
    '.venv/bin/python -c "import sys; from ppa.config import load_config; '
    'load_config(sys.argv[1:])"'
)


@dataclass(frozen=True)
class Rule:
    """How a documented command is exercised: `suffix` appended (runs as documented, shrunk),
    or `check` run instead, for the stated `reason`."""

    pattern: str
    suffix: str = ""
    check: str = ""
    reason: str = ""

    def matches(self, command: str) -> bool:
        return re.match(self.pattern, command) is not None


def entry(console: str, script: str) -> str:
    """A pattern for a command run either way the project offers: the console script in
    .venv/bin (`ppa-train`) or the shim in scripts/ run by the venv's Python."""
    return rf"^\.venv/bin/(?:{re.escape(console)}|python scripts/{re.escape(script)}\.py)(?: |$)"


def hydra_suffix(tmp: Path, data: Path) -> str:
    # Hydra's own run folder (.hydra, the log) in the temp folder, not the project's outputs/.
    return " ".join([f"dataset.root={data}", *TINY, f"hydra.run.dir={tmp}/hydra/$RANDOM"])


def rules(tmp: Path, data: Path, workdir: Path) -> list[Rule]:
    hydra = hydra_suffix(tmp, data)
    app = " ".join([f"dataset.root={data}", *TINY])
    launch = f"--workdir {workdir} --timeout 900"  # the launchers' outputs in the sandbox
    compose = COMPOSE + " "
    return [
        # -- checked instead of run (first: the run rules below would match them too)
        Rule(
            entry("ppa-train", "train_central") + r"dataset=synthetic_public",
            check="CFG",
            reason="pretrains on the full public set (minutes); tests/test_dp_public.py trains "
            "a start on tiny disjoint sets",
        ),
        Rule(
            entry("ppa-simulate", "run_simulation") + r"privacy=(?:dp_)?finetune",
            check="COMPOSE",
            reason="needs the public start of the line before, trained in full; "
            "tests/test_dp_finetune.py and tests/test_dp_public.py fine-tune from tiny starts",
        ),
        Rule(
            entry("ppa-evaluate", "evaluate") + r".*checkpoint=outputs/compare/",
            check="COMPOSE",
            reason="evaluates the checkpoints a ppa-compare run trains (an hour and more); "
            "tests/test_reranking.py evaluates a tiny model with and without re-ranking",
        ),
        # -- runs, shrunk
        Rule(r"^export PATH=", suffix=""),
        Rule(r"^[A-Z]+=", suffix=""),  # a variable of the block (D=..., C="...")
        Rule(
            r"^FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run \. --federation-config",
            suffix=f"--run-config \"overrides='{app}'\"",
        ),
        Rule(
            # a named set that is not the demo's: written tiny, into the sandbox
            entry("ppa-make-synthetic", "make_synthetic") + r"dataset=synthetic_\w+$",
            suffix=f"{SYNTHETIC_TINY} dataset.root={tmp}/synthetic/$RANDOM",
        ),
        Rule(entry("ppa-make-synthetic", "make_synthetic"), suffix=SYNTHETIC_TINY),
        Rule(entry("ppa-train", "train_central"), suffix=hydra),
        Rule(entry("ppa-evaluate", "evaluate"), suffix=hydra),
        Rule(entry("ppa-privacy-report", "privacy_report"), suffix=hydra),
        Rule(entry("ppa-ablation", "run_ablation"), suffix=hydra),
        Rule(
            entry("ppa-simulate", "run_simulation") + r"(?!federation\.ray_address=<)",
            suffix=f"{launch} {app}",
        ),
        Rule(
            # sites from the config: the two of by_modality instead of six cameras (each site
            # is a SuperNode and a ClientApp process per round on this machine's two cores)
            entry("ppa-deploy", "run_deployment") + r"(?!.*--site )",
            suffix=f"--rounds 1 {launch} {app} federation.partition=by_modality",
        ),
        Rule(entry("ppa-deploy", "run_deployment"), suffix=f"--rounds 1 {launch} {app}"),
        # -- checked instead of run, with the reason
        Rule(
            r"^make demo$",
            check="make -n demo | grep -q 'ppa-simulate --experiment demo' && "
            f".venv/bin/ppa-simulate --experiment demo {launch} {app}",
            reason="32 rounds on the full synthetic set take minutes: its simulation runs tiny",
        ),
        Rule(r"^make test$", check="make -n test", reason="runs this very suite"),
        Rule(
            r"^make pose-setup$",
            check="make -n pose-setup",
            reason="builds .venv-pose from PyPI (minutes; the suite's pose tests cover it)",
        ),
        Rule(
            r"^\.venv-pose/bin/(?:python scripts/extract_keypoints\.py|ppa-extract-keypoints)|"
            + entry("ppa-extract-keypoints", "extract_keypoints")
            + r"dataset=sysu pose_backend=file",
            check="CFG",  # the command's own overrides, composed: see `check_command`
            reason="needs the real dataset, the pose environment and pose weights or files",
        ),
        Rule(
            r"^flwr run \. mylink",
            check="flwr run --help >/dev/null",
            reason="needs a deployed SuperLink (tests/test_deployment*.py deploy on loopback)",
        ),
        Rule(
            r"^flwr run \. <connection>",
            check=compose + "experiment=demo federation.rounds=5 ppa=kpr",
            reason="<connection> is a placeholder; the run-config's overrides compose",
        ),
        Rule(
            r"^ray start",
            check=".venv/bin/ray start --help >/dev/null",
            reason="starts a Ray cluster on fixed ports (tests/test_ray_cluster.py: loopback)",
        ),
        Rule(
            entry("ppa-simulate", "run_simulation") + r"federation\.ray_address=<",
            check=compose + "federation.ray_address=127.0.0.1:6379 "
            "federation.resources.num_cpus=4 federation.resources.num_gpus=0.5",
            reason="needs a Ray cluster (tests/test_ray_cluster.py runs on a loopback head)",
        ),
        Rule(
            entry("ppa-bench", "bench"),
            check=".venv/bin/ppa-bench --help >/dev/null",
            reason="benchmarks run 15-20 min; tests/test_bench.py runs their cases tiny",
        ),
        Rule(
            entry("ppa-regdb-trials", "regdb_trials") + r"experiment=regdb_agw",
            check=compose + "experiment=regdb_agw dataset.root=/path/RegDB",
            reason="ten ResNet-50 trainings on the real RegDB (a GPU's work); it composes here",
        ),
        Rule(
            entry("ppa-compare", "compare_fed_central"),
            check="COMPOSE",
            reason="trains a federation and a centralised model per seed and budget (an hour "
            "and more); tests/test_compare.py runs its plumbing on tiny settings",
        ),
        Rule(
            entry("ppa-privacy-curve", "privacy_curve"),
            check="COMPOSE",
            reason="one DP federation per epsilon and seed from a public start (an hour); "
            "tests/test_dp_curve.py runs the curve on tiny settings",
        ),
        Rule(
            r"^make mutation",
            check="make -n mutation >/dev/null",
            reason="mutation testing takes hours on 2 cores (docs/testing.md)",
        ),
        Rule(
            r"^\.venv/bin/mutmut results",
            check=".venv/bin/mutmut --help >/dev/null",
            reason="reads the results of a `make mutation` run",
        ),
        Rule(
            r"^curl |^sha256sum ",
            check="command -v curl >/dev/null && command -v sha256sum >/dev/null",
            reason="downloads pose weights from the internet, which this machine cannot reach",
        ),
    ]


SYNTHETIC_TINY = " ".join(
    [
        "dataset.synthetic.num_train_ids=10",
        "dataset.synthetic.num_val_ids=2",
        "dataset.synthetic.num_test_ids=6",
        "dataset.synthetic.images_per_camera=3",
        "dataset.synthetic.image_height=64",
        "dataset.synthetic.image_width=32",
    ]
)


# scripts/<shim>.py -> the console script it runs (pyproject.toml, [project.scripts]).
CONSOLE_OF_SHIM = {
    "train_central": "ppa-train",
    "evaluate": "ppa-evaluate",
    "privacy_report": "ppa-privacy-report",
    "run_ablation": "ppa-ablation",
    "make_synthetic": "ppa-make-synthetic",
    "extract_keypoints": "ppa-extract-keypoints",
    "run_simulation": "ppa-simulate",
    "run_deployment": "ppa-deploy",
    "bench": "ppa-bench",
}


@dataclass
class Block:
    source: str  # file:line
    commands: list[str]


def split_comment(line: str) -> str:
    """`line` without a trailing shell comment (a # after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def logical_commands(body: str) -> list[str]:
    commands, current = [], ""
    for raw in body.splitlines():
        line = split_comment(raw)
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        current += line.strip()
        if current.strip():
            commands.append(" ".join(current.split()))
        current = ""
    return commands


def doc_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group("lang") not in SHELL:
                continue
            body = "\n".join(
                line[len(match.group("indent")) :] for line in match.group("body").splitlines()
            )
            line_no = text[: match.start()].count("\n") + 1
            blocks.append(Block(f"{path.relative_to(REPO)}:{line_no}", logical_commands(body)))
    return blocks


def check_command(command: str, rule: Rule) -> str:
    if rule.check not in ("CFG", "COMPOSE"):
        return rule.check
    # The documented overrides, composed by the CPU environment's copy of the command (the
    # console script, whether the doc names it or its shim in scripts/), or by the project's
    # config loader for commands that are not Hydra applications.
    words = command.split()
    program = next(w for w in words if w.endswith(".py") or "/bin/ppa-" in w)
    overrides = words[words.index(program) + 1 :]
    if rule.check == "COMPOSE":
        return f"{COMPOSE} {' '.join(overrides)}"
    console = program.split("/")[-1]
    if program.endswith(".py"):
        console = CONSOLE_OF_SHIM[Path(program).stem]
    return f".venv/bin/{console} {' '.join(overrides)} --cfg job >/dev/null"


def script_for(block: Block, table: list[Rule]) -> tuple[str, list[str]]:
    lines, missing = ["set -euo pipefail"], []
    for command in block.commands:
        rule = next((r for r in table if r.matches(command)), None)
        if rule is None:
            missing.append(command)
        elif rule.check:
            lines.append(f"# not run as documented: {rule.reason}")
            lines.append(check_command(command, rule))
        else:
            lines.append(f"{command} {rule.suffix}".rstrip())
    return "\n".join(lines), missing


def test_every_documented_command_has_a_rule(tmp_path: Path) -> None:
    table = rules(tmp_path, tmp_path / "data", tmp_path / "work")
    blocks = doc_blocks()
    assert len(blocks) >= 10, [b.source for b in blocks]
    missing = [f"{b.source}: {c}" for b in blocks for c in script_for(b, table)[1]]
    assert not missing, "documented commands without a rule in RULES:\n" + "\n".join(missing)
    assert all(r.reason for r in table if r.check), "every checked command says why"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, tiny_sysu_root: Path):
    base = tmp_path_factory.mktemp("doc_commands")
    flower = LocalFlower(base / "flwr-home", base / "work")
    photos = base / "photos"
    photos.mkdir()
    from PIL import Image
    from skimage import data as samples

    Image.fromarray(samples.astronaut()).save(photos / "astronaut.png")
    yield base, flower, photos, tiny_sysu_root
    flower.stop()
    assert not processes_with(str(flower.home)), "Flower processes left running"


@pytest.mark.timeout(BLOCK_TIMEOUT_S + 120)  # a block of several runs outlasts the default
@pytest.mark.parametrize("index", range(len(doc_blocks())), ids=[b.source for b in doc_blocks()])
def test_documented_block_runs(index: int, sandbox) -> None:
    base, flower, photos, data = sandbox
    block = doc_blocks()[index]
    script, missing = script_for(block, rules(base, data, flower.workdir))
    assert not missing, missing
    # Paths the docs name as examples, inside the sandbox.
    script = script.replace("/tmp/dpeval", str(base / "dpeval"))
    script = script.replace("/data/person_photos", str(photos))
    script = script.replace("PPA_WORKDIR=$PWD", f"PPA_WORKDIR={flower.workdir}")
    env = dict(flower.env, PPA_WORKDIR=str(flower.workdir))
    if "flwr run . --federation-config" in script:
        flower.ensure_superlink()  # flwr allows its detached SuperLink 15 s to start
    proc = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, (
        f"{block.source} failed:\n{script}\n--- stdout\n{proc.stdout[-3000:]}"
        f"\n--- stderr\n{proc.stderr[-4000:]}"
    )
    if "flwr run . --federation-config" in script:
        assert "round 1/1" in proc.stdout + proc.stderr
