"""BatchNorm statistics of a federated global model, measured at the sites and combined.

Why: FedAvg averages the sites' BatchNorm running statistics, but those describe each site's
*local* model on one modality, not the averaged model. The averaged model's activations have
other means and variances, so at test time every BatchNorm mis-normalises (docs/results.md
measures what re-measuring them gives back on the synthetic SYSU demo). The fix is a
statistics round: sites run the new global model forward, without gradients, over a few of
their images and report the mean and variance of each BatchNorm's input; the server pools
them exactly (a mixture: means weighted by images, variances with the between-site spread of
the means added back).

Only BatchNorm statistics travel: per-channel first and second moments of activations, of
the same kind the training reply already carries. A GroupNorm model (``privacy=dp``) has none,
so nothing is measured or sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from ppa.data.loader import Batch
from ppa.data.transforms import normalize
from ppa.model.encoder import PPAEncoder

CALIBRATION_MODES = ("eval", "train")  # federation.calibration_mode
MEAN_SUFFIX = ".running_mean"
VAR_SUFFIX = ".running_var"


def _batch_norms(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every BatchNorm that keeps running statistics, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            yield name, module


def calibration_mode(cfg: DictConfig) -> str:
    """`federation.calibration_mode`, with ``auto`` resolved: ``train`` when the trunk keeps
    BatchNorm statistics per modality (stems and BNNeck are per modality already, so test
    time normalises every layer per modality, as local training did), ``eval`` otherwise."""
    mode = str(cfg.federation.get("calibration_mode", "auto"))
    if mode != "auto":
        return mode
    per_modality = str(cfg.model.get("trunk_stats", "shared")) == "modality"
    return "train" if per_modality else "eval"


def norm_statistics_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every BatchNorm's running mean and variance, in module order."""
    suffixes = (MEAN_SUFFIX, VAR_SUFFIX)
    return [name + suffix for name, _ in _batch_norms(model) for suffix in suffixes]


@torch.no_grad()
def measure_norm_statistics(
    model: PPAEncoder,
    batches: Iterable[Batch],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    mode: str = "eval",
) -> tuple[dict[str, np.ndarray], int]:
    """Per-channel mean and (unbiased) variance of every BatchNorm's input over the raw
    images of `batches`, with the model in evaluation mode (``mode="eval"``) or normalising
    with each batch's own statistics (``mode="train"``, running statistics untouched).

    With one set of statistics per BatchNorm, evaluation mode: in training mode each BatchNorm
    normalises with the batch's own statistics, and a site's batches hold one modality, so the
    layers below would see per-modality-normalised inputs that never occur at test time (on the
    synthetic SYSU demo, training-mode statistics gave back nothing of the averaging loss).
    With statistics per modality everywhere (``model.trunk_stats=modality``), test time does
    normalise per modality, and training mode measures exactly what local training saw.
    Raw images only, although training mixes raw and anonymised views: the statistics serve
    retrieval, whose headline protocol (raw-raw, comparable with the literature) sees raw images.
    Returns ({key: array} for the BatchNorms the data passed through, number of images).
    The model is not modified.
    """
    if mode not in CALIBRATION_MODES:
        raise ValueError(f"calibration mode must be one of {CALIBRATION_MODES}, got {mode!r}")
    sums: dict[str, list] = {}
    hooks = []
    for name, module in _batch_norms(model):

        def record(_module: nn.Module, inputs: tuple, _output: object, name: str = name):
            x = inputs[0].detach().double()
            dims = [0, *range(2, x.dim())]
            acc = sums.setdefault(name, [0, 0.0, 0.0])
            acc[0] += x.numel() // x.shape[1]
            acc[1] = acc[1] + x.sum(dims)
            acc[2] = acc[2] + (x * x).sum(dims)

        hooks.append(module.register_forward_hook(record))
    was_training = model.training
    momenta = {name: module.momentum for name, module in _batch_norms(model)}
    counters = {
        name: module.num_batches_tracked.clone()
        for name, module in _batch_norms(model)
        if module.num_batches_tracked is not None
    }
    images_seen = 0
    try:
        if mode == "train":
            model.train()
            for _, module in _batch_norms(model):
                module.momentum = 0.0  # running = (1 - 0) running + 0 batch: unchanged
        else:
            model.eval()
        for batch in batches:
            if mode == "train" and batch.images.shape[0] < 2:
                continue  # batch statistics of one image do not exist
            batch = batch.to(device)
            model(normalize(batch.images, mean, std), batch.modality)
            images_seen += batch.images.shape[0]
    finally:
        for hook in hooks:
            hook.remove()
        for name, module in _batch_norms(model):
            module.momentum = momenta[name]
            if name in counters:
                module.num_batches_tracked.copy_(counters[name])
        model.train(was_training)
    out: dict[str, np.ndarray] = {}
    for name, (count, first, second) in sums.items():
        mu = first / count
        var = (second / count - mu * mu).clamp(min=0.0) * count / max(count - 1, 1)
        out[name + MEAN_SUFFIX] = mu.float().cpu().numpy()
        out[name + VAR_SUFFIX] = var.float().cpu().numpy()
    return out, images_seen


def pool_norm_statistics(
    parts: Sequence[tuple[Mapping[str, np.ndarray], float]],
) -> dict[str, np.ndarray]:
    """Pool per-site statistics (stats, images) into the statistics of all their images.

    For each BatchNorm the sites that report it are pooled: mean = sum_i w_i m_i / W and
    var = sum_i w_i (v_i + m_i^2) / W - mean^2 (the law of total variance).
    """
    sums: dict[str, list] = {}
    for stats, weight in parts:
        for key in stats:
            if not key.endswith(MEAN_SUFFIX):
                continue
            prefix = key[: -len(MEAN_SUFFIX)]
            m = np.asarray(stats[key], np.float64)
            v = np.asarray(stats[prefix + VAR_SUFFIX], np.float64)
            acc = sums.setdefault(prefix, [0.0, np.zeros_like(m), np.zeros_like(m)])
            acc[0] += weight
            acc[1] += weight * m
            acc[2] += weight * (v + m * m)
    out = {}
    for prefix, (total, first, second) in sums.items():
        mean = first / total
        out[prefix + MEAN_SUFFIX] = mean.astype(np.float32)
        out[prefix + VAR_SUFFIX] = np.maximum(second / total - mean * mean, 0.0).astype(np.float32)
    return out
