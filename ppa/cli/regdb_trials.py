"""RegDB the reference way: one model per trial, each tested on its own trial; mean and spread.

    ppa-regdb-trials experiment=regdb_agw
    ppa-regdb-trials dataset=synthetic_regdb 'dataset.run_trials=[1,2]' train.epochs=2

For every trial t of ``dataset.run_trials`` (all ten by default) this trains with
``dataset.train_trial=t`` (ppa-train's training, output `<output_dir>/trial_t`)
and evaluates that checkpoint on trial t's test half (ppa-evaluate). It writes
`<output_dir>/regdb_trials.json` (per-trial numbers, mean, sample std, min, max) and
`regdb_trials.md`; the last line printed is the path of the JSON.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ppa.cli.evaluate import run as evaluate_checkpoint
from ppa.cli.train import train
from ppa.config import CONFIG_DIR, resolve_path
from ppa.data.protocols import protocol_of
from ppa.trial_summary import summarize_reports

logger = logging.getLogger("regdb_trials")


def trial_config(cfg: DictConfig, trial: int) -> DictConfig:
    """The run config of one trial: its training trial (the test trial follows it) and its own
    output folder."""
    base = OmegaConf.to_container(cfg, resolve=False)
    trial_cfg = OmegaConf.merge(
        OmegaConf.create(base),
        {
            "dataset": {"train_trial": int(trial)},
            "run_name": f"{cfg.run_name}_trial{trial}",
            "checkpoint": None,
        },
    )
    trial_dir = resolve_path(cfg.output_dir) / f"trial_{trial}"
    trial_cfg.output_dir = str(trial_dir)
    # Each trial's evaluation beside its model: <output_dir>/trial_t/evaluation/.
    trial_cfg.eval.output_dir = str(trial_dir / "evaluation")
    return trial_cfg


def table(summary: dict) -> str:
    lines = [
        "| protocol | direction | Rank-1 | Rank-10 | mAP | mINP |",
        "|---|---|---|---|---|---|",
    ]
    for protocol, groups in summary["results"].items():
        for group, metrics in groups.items():
            cells = [
                f"{100 * metrics[m]['mean']:.2f} ± {100 * metrics[m]['std']:.2f}"
                for m in ("rank1", "rank10", "mAP", "mINP")
            ]
            lines.append(f"| {protocol} | {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(cfg: DictConfig) -> Path:
    if protocol_of(cfg.dataset) != "regdb":
        raise ValueError(
            f"ppa-regdb-trials runs RegDB's per-trial protocol; dataset={cfg.dataset.name} "
            f"has protocol {cfg.dataset.protocol!r}"
        )
    trials = [int(t) for t in cfg.dataset.get("run_trials") or range(1, 11)]
    reports: dict[int, dict] = {}
    for trial in trials:
        tcfg = trial_config(cfg, trial)
        logger.info("=== RegDB trial %d: training (%s)", trial, tcfg.output_dir)
        tcfg.checkpoint = str(train(tcfg))
        reports[trial] = json.loads(Path(evaluate_checkpoint(tcfg)).read_text())
    summary = summarize_reports(reports)
    summary["epoch_length"] = str(cfg.train.get("epoch_length", "records"))
    summary["method"] = str(cfg.ppa.name)
    out = resolve_path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "regdb_trials.json"
    path.write_text(json.dumps(summary, indent=2))
    (out / "regdb_trials.md").write_text(
        f"{len(trials)} models (trials {trials}), mean ± sample std\n\n{table(summary)}\n"
    )
    print(table(summary))
    return path


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(run(cfg))


if __name__ == "__main__":
    main()
