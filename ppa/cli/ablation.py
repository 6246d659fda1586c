"""The PPA ablation ladder in one command: train and evaluate each method, print one table.

    ppa-ablation experiment=demo train.epochs=16 'train.lr_steps=[12]'
    ppa-ablation experiment=demo '+ablation=[baseline,full]'

For every method of configs/ppa/ (baseline, anon_only, kpr, dcma, full, or the `+ablation`
list) this runs ppa-train's training and ppa-evaluate's evaluation with
the same overrides (run_name=<run_name>_<method>, trained in `<output_dir>/<method>/`), then
writes `<output_dir>/ablation.md` and
`ablation.json`: mAP / Rank-1 / mINP under raw-raw, anon-anon and raw-anon (the first
evaluation group: SYSU all-search or RegDB visible->thermal) plus the head-region SSIM of each
method's anonymisation. The last line printed is the path of ablation.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ppa.cli.evaluate import run as evaluate_checkpoint
from ppa.cli.train import train
from ppa.config import CONFIG_DIR, load_config, resolve_path
from ppa.eval.report import EvaluationReport
from ppa.run_dir import claim_run_dir, job_output_dir

logger = logging.getLogger("run_ablation")

LADDER = ("baseline", "anon_only", "kpr", "dcma", "full")
PROTOCOLS = ("raw-raw", "anon-anon", "raw-anon")


def method_config(cfg: DictConfig, method: str) -> DictConfig:
    """The run config with the method's `ppa` group and its own run name / output folder."""
    base = OmegaConf.to_container(cfg, resolve=False)
    base.pop("ablation", None)
    method_ppa = load_config([f"ppa={method}"]).ppa
    merged = OmegaConf.merge(
        OmegaConf.create(base),
        {"ppa": method_ppa, "run_name": f"{cfg.run_name}_{method}", "checkpoint": None},
    )
    # Inside the ablation's own run folder, so a later ablation never writes over it.
    merged.output_dir = f"{cfg.output_dir}/{method}"
    return merged


def table(rows: dict[str, dict]) -> str:
    header = (
        "| method | " + " | ".join(f"{p} mAP / R1 / mINP" for p in PROTOCOLS) + " | head SSIM |"
    )
    lines = [header, "|" + "---|" * (len(PROTOCOLS) + 2)]
    for method, row in rows.items():
        cells = []
        for p in PROTOCOLS:
            v = row["results"].get(p)
            cells.append(
                f"{100 * v['mAP']:.2f} / {100 * v['rank1']:.2f} / {100 * v['mINP']:.2f}"
                if v
                else "-"
            )
        head = row.get("head_ssim")
        head_cell = f"{head:.3f}" if head is not None else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {head_cell} |")
    return "\n".join(lines)


def run(cfg: DictConfig) -> Path:
    methods = list(cfg.get("ablation") or LADDER)
    rows: dict[str, dict] = {}
    for method in methods:
        mcfg = method_config(cfg, method)
        logger.info("=== %s: training (%s)", method, mcfg.output_dir)
        checkpoint = train(mcfg)
        mcfg.checkpoint = str(checkpoint)
        mcfg.eval.protocols = list(PROTOCOLS)
        metrics_path = evaluate_checkpoint(mcfg)
        report = EvaluationReport.from_json(json.loads(Path(metrics_path).read_text()))
        rows[method] = {
            "results": report.headlines(),
            "head_ssim": report.extras.get("anonymization", {}).get("head_ssim"),
            "metrics": str(metrics_path),
            "checkpoint": str(checkpoint),
        }
    out = resolve_path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    markdown = out / "ablation.md"
    markdown.write_text(table(rows) + "\n")
    print(table(rows))
    return markdown


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    claim_run_dir(job_output_dir(cfg))  # the run's own folder, `latest` beside it
    print(run(cfg))


if __name__ == "__main__":
    main()
