"""The PPA ablation ladder in one command: train and evaluate each method, print one table.

    ppa-ablation experiment=demo train.epochs=16 'train.lr_steps=[12]'
    ppa-ablation experiment=demo '+ablation=[baseline,full]'
    ppa-ablation experiment=demo train.epochs=16 'train.lr_steps=[12]' '+seeds=[0,1,2]'

For every method of configs/ppa/ (baseline, anon_only, kpr, dcma, full, or the `+ablation`
list) this runs ppa-train's training and ppa-evaluate's evaluation with the same overrides
(run_name=<run_name>_<method>, trained in `<output_dir>/<method>/`). `ppa.*` settings of the
experiment or the command line carry over to every method except the switches that define one;
a loss weight reaches only the methods that have the term (`ppa.weights.kpr=0` runs kpr and full
without L_kpr, the baseline stays as it is). Then it writes `<output_dir>/ablation.md` and
`ablation.json`: mAP / Rank-1 / mINP under raw-raw, anon-anon and raw-anon (the first
evaluation group: SYSU all-search or RegDB visible->thermal) plus the head-region SSIM of each
method's anonymisation. With `+seeds=[...]` every seed's ladder trains into
`<output_dir>/seed<S>/` and the table gives mean ± sample std over the seeds (ablation.json
keeps each seed's rows and the spread). The last line printed is the path of ablation.md.
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
from ppa.trial_summary import SUMMARISED, spread

logger = logging.getLogger("run_ablation")

LADDER = ("baseline", "anon_only", "kpr", "dcma", "full")
PROTOCOLS = ("raw-raw", "anon-anon", "raw-anon")


# What makes a rung of the ladder what it is: never carried over from the run's own `ppa`.
METHOD_SWITCHES = ("name", "anonymized_view", "pose_guided", "offsets")


def carried_settings(cfg: DictConfig) -> tuple[dict, dict]:
    """The run's `ppa` settings that differ from its own method file (set by an experiment or
    on the command line): (settings other than the method switches and the loss weights, the
    loss weights).

    `method_config` gives a loss weight only to a method that has the term, so
    `ppa.weights.align=1` changes dcma and full, never turns L_align on in the baseline.
    """
    current = OmegaConf.to_container(cfg.ppa, resolve=True)
    reference = OmegaConf.to_container(load_config([f"ppa={cfg.ppa.name}"]).ppa, resolve=True)
    settings = {
        key: value
        for key, value in current.items()
        if key not in METHOD_SWITCHES and key != "weights" and value != reference.get(key)
    }
    weights = {
        term: value
        for term, value in current["weights"].items()
        if value != reference["weights"].get(term)
    }
    return settings, weights


def method_config(cfg: DictConfig, method: str) -> DictConfig:
    """The run config with the method's `ppa` group, the run's own `ppa` settings carried over
    (`carried_settings`), and the method's run name / output folder."""
    base = OmegaConf.to_container(cfg, resolve=False)
    base.pop("ablation", None)
    method_ppa = OmegaConf.to_container(load_config([f"ppa={method}"]).ppa, resolve=True)
    settings, weights = carried_settings(cfg)
    method_ppa.update(settings)
    for term, value in weights.items():
        if method_ppa["weights"].get(term, 0.0) != 0.0:
            method_ppa["weights"][term] = value
    merged = OmegaConf.merge(
        OmegaConf.create(base),
        {"run_name": f"{cfg.run_name}_{method}", "checkpoint": None},
    )
    merged.ppa = OmegaConf.create(method_ppa)  # replaced, not merged: no key of another method
    # Inside the ablation's own run folder, so a later ablation never writes over it.
    merged.output_dir = f"{cfg.output_dir}/{method}"
    return merged


def protocol_cell(numbers: dict | None) -> str:
    """mAP / Rank-1 / mINP in %: one run's, or over seeds mean ± std of mAP and the means."""
    if numbers is None:
        return "-"
    if isinstance(numbers["mAP"], dict):
        return (
            f"{100 * numbers['mAP']['mean']:.2f} ± {100 * numbers['mAP']['std']:.2f}"
            f" / {100 * numbers['rank1']['mean']:.2f} / {100 * numbers['mINP']['mean']:.2f}"
        )
    return (
        f"{100 * numbers['mAP']:.2f} / {100 * numbers['rank1']:.2f} / {100 * numbers['mINP']:.2f}"
    )


def table(rows: dict[str, dict], seeds: list[int] | None = None) -> str:
    """One row per method: each protocol's cell, the head SSIM and, over seeds, the raw-raw mAP
    of every seed."""
    extra = f" raw-raw mAP, seeds {', '.join(map(str, seeds))} |" if seeds else ""
    header = "| method | " + " | ".join(f"{p} mAP / R1 / mINP" for p in PROTOCOLS)
    lines = [header + " | head SSIM |" + extra, "|" + "---|" * (len(PROTOCOLS) + 2 + bool(seeds))]
    for method, row in rows.items():
        cells = [protocol_cell(row["results"].get(p)) for p in PROTOCOLS]
        head = row.get("head_ssim")
        head = head["mean"] if isinstance(head, dict) else head
        cells.append(f"{head:.3f}" if head is not None else "-")
        if seeds:
            raw = row["results"].get("raw-raw")
            per_seed = raw["mAP"]["per_seed"] if raw else []
            cells.append(", ".join(f"{100 * v:.2f}" for v in per_seed) or "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ladder(cfg: DictConfig, methods: list[str]) -> dict[str, dict]:
    """Train and evaluate each method under `cfg` (one seed): method -> its row."""
    rows: dict[str, dict] = {}
    for method in methods:
        mcfg = method_config(cfg, method)
        logger.info("=== %s, seed %s: training (%s)", method, cfg.seed, mcfg.output_dir)
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
    return rows


def over_seeds(per_seed: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """seed -> method -> row  =>  method -> protocol -> metric -> spread over the seeds (mean,
    sample std, min, max, and the per-seed values), plus the head SSIM's spread."""
    seeds = sorted(per_seed)
    summary: dict[str, dict] = {}
    for method in per_seed[seeds[0]]:
        rows = [per_seed[s][method] for s in seeds]
        results = {}
        for protocol in PROTOCOLS:
            if any(protocol not in row["results"] for row in rows):
                continue
            results[protocol] = {}
            for metric in SUMMARISED:
                values = [row["results"][protocol][metric] for row in rows]
                results[protocol][metric] = spread(values) | {"per_seed": values}
        heads = [row["head_ssim"] for row in rows]
        summary[method] = {
            "results": results,
            "head_ssim": None if None in heads else spread(heads),
        }
    return summary


def run(cfg: DictConfig) -> Path:
    """The ladder for `cfg.seed`, or for every seed of `+seeds=[...]` (each in
    `<output_dir>/seed<S>/`) with the mean and spread over them."""
    methods = list(cfg.get("ablation") or LADDER)
    out = resolve_path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = cfg.get("seeds")
    if not seeds:
        rows = ladder(cfg, methods)
        text = table(rows)
        (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    else:
        per_seed: dict[int, dict[str, dict]] = {}
        for seed in (int(s) for s in seeds):
            scfg = OmegaConf.merge(
                cfg,
                {
                    "seed": seed,
                    "run_name": f"{cfg.run_name}_s{seed}",
                    "output_dir": f"{cfg.output_dir}/seed{seed}",
                },
            )
            per_seed[seed] = ladder(scfg, methods)
        summary = over_seeds(per_seed)
        text = table(summary, sorted(per_seed))
        payload = {"seeds": sorted(per_seed), "summary": summary, "per_seed": per_seed}
        (out / "ablation.json").write_text(json.dumps(payload, indent=2))
    markdown = out / "ablation.md"
    markdown.write_text(text + "\n")
    print(text)
    return markdown


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    claim_run_dir(job_output_dir(cfg))  # the run's own folder, `latest` beside it
    print(run(cfg))


if __name__ == "__main__":
    main()
