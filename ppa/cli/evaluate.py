"""Evaluate a checkpoint on SYSU-MM01 or RegDB under the privacy protocols.

    ppa-evaluate checkpoint=outputs/demo/latest/model_latest.pt
    ppa-evaluate checkpoint=... dataset=regdb eval.protocols=[raw-raw]

Prints a table, writes `metrics.json` (every number: per trial and mean, per protocol and
SYSU mode / RegDB direction, plus the anonymisation's head-region PSNR/SSIM and face
detection rates), a CMC plot and a raw-vs-anonymised sample grid into a new folder in the
checkpoint's own run, `<run>/evaluate/<checkpoint name>-<date-time>/` (`latest` beside it), or
into `eval.output_dir=` when given. The last line printed is the path of metrics.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig, OmegaConf

from ppa.anonymize import KprAnonymizer
from ppa.anonymize.factory import noise_keys_for
from ppa.anonymize.measures import FaceDetector
from ppa.anonymize.report import measure_anonymization, sample_by_modality
from ppa.checkpoint import model_from_checkpoint
from ppa.config import CONFIG_DIR, effective_config, resolve_path
from ppa.data.keypoints import load_dataset_keypoints
from ppa.data.loader import create_eval_loader
from ppa.data.noise_keys import EVALUATOR
from ppa.data.protocols import dataset_root, test_settings
from ppa.device import DeviceSettings
from ppa.eval.evaluate import PRIVACY_PROTOCOLS, TestImages, evaluate
from ppa.eval.report import EvaluationReport
from ppa.io import atomic_write_json
from ppa.run_dir import evaluation_dir
from ppa.seeding import seed_everything

logger = logging.getLogger(__name__)


def plot_cmc(report: EvaluationReport, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for protocol, groups in report.results.items():
        for group, entry in groups.items():
            ax.plot(
                range(1, len(entry.cmc) + 1),
                [100 * v for v in entry.cmc],
                marker=".",
                label=f"{protocol} / {group}",
            )
    ax.set_xlabel("rank")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # ranks are whole numbers
    ax.set_ylabel("matching rate (%)")
    ax.set_title(f"CMC on {report.dataset}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def precision_config(cfg: DictConfig, payload: dict) -> DictConfig:
    """The config whose `train.amp` the evaluation runs at: a federation's model (a server
    checkpoint, with its `server_round`) at the precision its server evaluated it with
    (`federation.amp` of its run, where set), so that scoring `model_latest.pt` reproduces the
    run's last central evaluation; any other checkpoint at `train.amp`."""
    trained = payload.get("config") or {}
    amp = (trained.get("federation") or {}).get("amp")
    if "server_round" not in payload or amp is None:
        return cfg
    return OmegaConf.merge(cfg, {"train": {"amp": amp}})


def run(cfg: DictConfig) -> Path:
    """Evaluate `cfg.checkpoint`; returns the path of metrics.json."""
    if not cfg.checkpoint:
        raise ValueError("the evaluation needs checkpoint=<path to a .pt file>")
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    model, payload = model_from_checkpoint(resolve_path(cfg.checkpoint))
    trained = payload.get("config") or {}
    cfg = effective_config(cfg, trained)
    # The dataset the checkpoint was trained on (RegDB: its trial) decides which test
    # identities it may be scored on.
    trained_on = OmegaConf.create(trained["dataset"]) if "dataset" in trained else None
    if trained_on is not None and str(trained_on.get("name")) != str(cfg.dataset.name):
        # Cross-dataset testing is legitimate, but a forgotten `dataset=` silently scores the
        # model on the default set: say which one is used.
        logger.warning(
            "%s was trained on dataset %s; evaluating on %s (pass dataset=%s to test on its own)",
            cfg.checkpoint,
            trained_on.get("name"),
            cfg.dataset.name,
            trained_on.get("name"),
        )
    device = DeviceSettings.from_config(precision_config(cfg, payload))
    device.place(model)
    protocols = list(cfg.eval.protocols)
    needs_anon = any("anon" in PRIVACY_PROTOCOLS[p] for p in protocols if p in PRIVACY_PROTOCOLS)
    root = dataset_root(cfg.dataset)
    settings = test_settings(cfg.dataset)  # validates the dataset layout first
    keypoints = anonymizer = noise_keys = None
    if needs_anon or cfg.eval.privacy_images:
        keypoints = load_dataset_keypoints(
            root, cfg.dataset.keypoints, required=cfg.pose.missing == "error"
        )
        anonymizer = KprAnonymizer.from_config(cfg).to(device.device)
        if "anonymizer" in payload:  # a learned anonymiser trained with the model
            anonymizer.load_state_dict(payload["anonymizer"])
        noise_keys = noise_keys_for(cfg, EVALUATOR)
    report = evaluate(
        model,
        cfg,
        device=device,
        protocols=protocols,
        anonymizer=anonymizer,
        keypoints=keypoints,
        noise_keys=noise_keys,
        settings=settings,
        trained_on=trained_on,
    )
    report.extras["checkpoint"] = str(resolve_path(cfg.checkpoint))
    report.extras["method"] = str(cfg.ppa.name)
    report.extras["anonymizer"] = OmegaConf.to_container(cfg.anonymizer, resolve=True)

    # Beside the checkpoint's own run, never over another run's results (ppa/run_dir.py).
    out = evaluation_dir(resolve_path(cfg.checkpoint), cfg.eval.get("output_dir"))
    if anonymizer is not None and cfg.eval.privacy_images:
        # Both modalities, half each (SYSU's test lists start with all infrared queries).
        sample = sample_by_modality(
            TestImages.from_settings(settings).records, int(cfg.eval.privacy_images)
        )
        loader = create_eval_loader(
            sample,
            root,
            input_cfg=cfg.input,
            batch_size=int(cfg.eval.batch_size),
            num_workers=int(cfg.eval.num_workers),
            pose_cfg=cfg.pose,
            keypoints=keypoints,
            noise_keys=noise_keys,
        )
        privacy = measure_anonymization(
            loader,
            anonymizer,
            device.device,
            face_detector=FaceDetector() if cfg.eval.face_detection else None,
            grid_samples=int(cfg.eval.privacy_samples),
        )
        report.extras["anonymization"] = privacy.scores
        grid = privacy.save_grid(out / "anonymization.png")
        report.extras["anonymization_grid"] = str(grid) if grid else None
    report.extras["cmc_plot"] = str(plot_cmc(report, out / "cmc.png"))
    metrics_path = atomic_write_json(out / "metrics.json", report.to_json(), indent=2)
    print(report.table())
    if "anonymization" in report.extras:
        s = report.extras["anonymization"]
        print(
            f"anonymisation ({cfg.anonymizer.name}, pose-guided={cfg.ppa.pose_guided}): "
            f"head PSNR {s['head_psnr']:.2f} dB, head SSIM {s['head_ssim']:.3f}, "
            f"image PSNR {s['image_psnr']:.2f} dB, image SSIM {s['image_ssim']:.3f} "
            f"({s['num_images_visible']:.0f} visible + {s['num_images_infrared']:.0f} infrared "
            "test images)"
        )
    return metrics_path


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(run(cfg))


if __name__ == "__main__":
    main()
