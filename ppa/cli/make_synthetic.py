"""Write the synthetic dataset selected by `dataset=` at `dataset.root`, unless it is there.

    ppa-make-synthetic                          # dataset=synthetic_sysu
    ppa-make-synthetic dataset=synthetic_regdb
    ppa-make-synthetic dataset.synthetic.seed=1 +force=true   # rewrite

Settings come from `dataset.synthetic` (configs/dataset/synthetic_*.yaml). A dataset that is
already present is left alone (a warning says so if it was written with other settings);
`+force=true` rewrites it. Only a folder this writer produced is ever replaced.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from ppa.config import CONFIG_DIR, resolve_path
from ppa.progress_bar import ProgressBar  # log lines, not a bar, when not on a terminal
from ppa.synthetic.files import read_manifest
from ppa.synthetic.renderer import RENDERER_VERSION
from ppa.synthetic.writer import write_synthetic_regdb, write_synthetic_sysu

log = logging.getLogger("make_synthetic")

WRITERS = {"sysu": write_synthetic_sysu, "regdb": write_synthetic_regdb}
SYNTHETIC_DATASETS = "dataset=synthetic_sysu or dataset=synthetic_regdb"


def _writer_settings(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """The writer for the configured dataset and its keyword arguments, validated."""
    dataset = cfg.dataset
    name = dataset.get("name", "<unnamed>")
    settings = dataset.get("synthetic")
    writer = WRITERS.get(dataset.get("protocol"))
    if settings is None or writer is None:
        raise SystemExit(
            f"make_synthetic: dataset={name} is not a synthetic dataset (no `synthetic:` "
            f"settings for protocol {dataset.get('protocol')!r}); use {SYNTHETIC_DATASETS}"
        )
    kwargs = OmegaConf.to_container(settings, resolve=True)
    params = [
        p
        for p in inspect.signature(writer).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("overwrite", "progress")
    ]
    accepted = {p.name for p in params}
    required = {p.name for p in params if p.default is inspect.Parameter.empty}
    unknown, missing = sorted(set(kwargs) - accepted), sorted(required - set(kwargs))
    if unknown or missing:
        raise SystemExit(
            f"make_synthetic: dataset.synthetic of dataset={name}: unknown keys {unknown}, "
            f"missing keys {missing} (the writer takes {sorted(accepted)})"
        )
    return writer, kwargs


def make_synthetic(cfg: DictConfig) -> dict[str, Any] | None:
    """Write the dataset if absent (or `force`); returns the summary, None when skipped."""
    writer, kwargs = _writer_settings(cfg)
    root = resolve_path(cfg.dataset.root)
    force = bool(cfg.get("force", False))
    if root.exists() and not force:
        manifest = read_manifest(root)
        if manifest is None:
            log.warning("%s exists but was not written by this script; leaving it alone", root)
        elif manifest.get("renderer_version") != RENDERER_VERSION:
            log.warning(
                "%s was written by renderer version %s, this is version %s; pass +force=true "
                "to rewrite it",
                root,
                manifest.get("renderer_version"),
                RENDERER_VERSION,
            )
        elif manifest.get("parameters") != kwargs:
            log.warning(
                "%s was written with %s, not the configured %s; pass +force=true to rewrite it",
                root,
                manifest.get("parameters"),
                kwargs,
            )
        else:
            log.info(
                "%s is already present (%s); pass +force=true to rewrite it", root, cfg.dataset.name
            )
        return None

    with ProgressBar(unit="img", desc=f"writing {cfg.dataset.name}", dynamic_ncols=True) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            summary = writer(root, **kwargs, overwrite=force, progress=progress)
        except FileExistsError as err:
            raise SystemExit(f"make_synthetic: {err}") from err
    _log_summary(str(cfg.dataset.name), summary)
    return summary


def _log_summary(name: str, summary: dict[str, Any]) -> None:
    # The summary's own "dataset" names the writer (synthetic_sysu for every SYSU-layout set).
    log.info(
        "wrote %s: %d images of %d identities at %s (%dx%d)",
        name,
        summary["num_images"],
        summary["num_ids"],
        summary["root"],
        *summary["image_size"],
    )
    if "images_per_camera" in summary:  # SYSU
        for cam, count in summary["images_per_camera"].items():
            log.info("  %s: %d images of %d identities", cam, count, summary["ids_per_camera"][cam])
        log.info("  ids: %s", ", ".join(f"{k} {len(v)}" for k, v in summary["ids"].items()))
    else:  # RegDB
        log.info("  images per modality: %s", summary["images_per_modality"])
        first = summary["trials"]["1"]
        log.info(
            "  %d trials; trial 1 trains on %d ids, tests on %d",
            len(summary["trials"]),
            len(first["train"]),
            len(first["test"]),
        )


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    make_synthetic(cfg)


if __name__ == "__main__":
    main()
