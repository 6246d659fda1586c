"""The PPA encoder: modality stems, shared trunk, GeM, BNNeck, classifier, DCMA offsets."""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from ppa.data.records import MODALITIES, Modality
from ppa.model.pooling import GeM, keypoint_pool

logger = logging.getLogger(__name__)

STEM_LAYERS = ("conv1", "bn1", "act1", "maxpool")
TRUNK_LAYERS = ("layer1", "layer2", "layer3", "layer4")


@dataclass
class EncoderOutput:
    """What one forward pass produces.

    pooled:    f, GeM-pooled trunk features (B, D), before any correction.
    corrected: g = f - delta_m for anonymised inputs, f for raw ones (B, D).
    neck:      BNNeck(corrected) (B, D): the retrieval feature at test time.
    logits:    identity logits from the neck (B, num_classes).
    parts:     keypoint-pooled part features (B, 17, D) when heatmaps were given.
    """

    feature_map: torch.Tensor
    pooled: torch.Tensor
    corrected: torch.Tensor
    neck: torch.Tensor
    logits: torch.Tensor
    parts: torch.Tensor | None = None


class ModalityOffsets(nn.Module):
    """DCMA: one learnable offset per modality, delta_m, in pooled-feature space.

    Each modality's offset is its own parameter (``offsets.visible``, ``offsets.infrared``) so
    the federation can aggregate them within a modality.
    """

    def __init__(self, modalities: Sequence[Modality], dim: int):
        super().__init__()
        self.modalities = tuple(modalities)
        for modality in self.modalities:
            self.register_parameter(modality.value, nn.Parameter(torch.zeros(dim)))

    def table(self) -> torch.Tensor:
        """(M, D) offsets, row i for Modality with index i."""
        return torch.stack([getattr(self, m.value) for m in self.modalities])

    def forward(self, modality: torch.Tensor) -> torch.Tensor:
        """Per-sample offsets (B, D) for modality indices (B,)."""
        return self.table()[modality]


class PPAEncoder(nn.Module):
    """Two-stream VI-ReID encoder (timm ResNet family).

    Modality-specific stems (conv1/bn1/act/maxpool per modality) feed a shared trunk
    (layers 1-4, last stride 1), GeM pooling, a BNNeck and a bias-free identity classifier.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        gem_p: float = 3.0,
        learn_gem_p: bool = True,
        modalities: Sequence[Modality] = MODALITIES,
    ):
        super().__init__()
        missing = [n for n in (*STEM_LAYERS, *TRUNK_LAYERS) if not hasattr(backbone, n)]
        if missing:
            raise ValueError(
                f"backbone {type(backbone).__name__} is not a ResNet-family model "
                f"(missing {missing})"
            )
        stem = nn.Sequential(OrderedDict((n, getattr(backbone, n)) for n in STEM_LAYERS))
        self.modalities = tuple(modalities)
        self.stems = nn.ModuleDict({m.value: copy.deepcopy(stem) for m in self.modalities})
        self.trunk = nn.Sequential(OrderedDict((n, getattr(backbone, n)) for n in TRUNK_LAYERS))
        dim = int(backbone.num_features)
        self.num_features = dim
        self.num_classes = int(num_classes)
        self.pool = GeM(gem_p, learnable=learn_gem_p)
        self.neck = nn.BatchNorm1d(dim)
        # BNNeck: the bias is frozen at 0 so the pre-BN (triplet) and post-BN (identity)
        # spaces stay aligned.
        self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        self.offsets = ModalityOffsets(self.modalities, dim)
        nn.init.constant_(self.neck.weight, 1.0)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self._feature_sizes: dict[tuple[int, int], tuple[int, int]] = {}

    # The timm-style model contract -------------------------------------------------------
    def forward_stem(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Route each image through its modality's stem."""
        present = torch.unique(modality).tolist()
        if len(present) == 1:
            return self.stems[self.modalities[present[0]].value](images)
        out: torch.Tensor | None = None
        for idx in present:
            sel = (modality == idx).nonzero(as_tuple=True)[0]
            y = self.stems[self.modalities[idx].value](images.index_select(0, sel))
            if out is None:
                out = y.new_empty((images.shape[0], *y.shape[1:]))
            out = out.index_copy(0, sel, y)
        assert out is not None
        return out

    def forward_features(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), normalised -> trunk feature map (B, D, h, w)."""
        return self.trunk(self.forward_stem(images, modality))

    def forward_head(
        self,
        feature_map: torch.Tensor,
        modality: torch.Tensor,
        anonymized: torch.Tensor | None = None,
        heatmaps: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Pool, correct anonymised features by their modality offset, BNNeck, classify."""
        pooled = self.pool(feature_map)
        corrected = pooled
        if anonymized is not None:
            shift = self.offsets(modality) * anonymized.to(pooled.dtype).unsqueeze(-1)
            corrected = pooled - shift
        neck = self.neck(corrected)
        logits = self.classifier(neck)
        parts = keypoint_pool(feature_map, heatmaps) if heatmaps is not None else None
        return EncoderOutput(feature_map, pooled, corrected, neck, logits, parts)

    def forward(
        self,
        images: torch.Tensor,
        modality: torch.Tensor,
        anonymized: torch.Tensor | None = None,
        heatmaps: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Full forward.

        `modality` holds Modality indices (B,); `anonymized` (B,) marks anonymised inputs whose
        pooled features are corrected by subtracting their modality's offset; `heatmaps`
        (B, 17, h, w) at the feature-map size enable keypoint-pooled parts.
        """
        return self.forward_head(
            self.forward_features(images, modality),
            modality,
            anonymized=anonymized,
            heatmaps=heatmaps,
        )

    # Parameter groups ---------------------------------------------------------------------
    def backbone_parameters(self) -> list[nn.Parameter]:
        """Stems, trunk and the GeM exponent: the backbone learning rate (the exponent
        diverges at the head's 10x rate)."""
        return [*self.stems.parameters(), *self.trunk.parameters(), *self.pool.parameters()]

    def head_parameters(self) -> list[nn.Parameter]:
        backbone = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in backbone]

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """Feature-map size for an input size (a no-grad probe through one stem + trunk)."""
        key = (int(height), int(width))
        if key not in self._feature_sizes:
            probe = next(iter(self.stems.values()))
            param = next(self.parameters())
            was_training = self.training
            self.eval()
            with torch.no_grad():
                x = torch.zeros(1, 3, *key, device=param.device, dtype=param.dtype)
                self._feature_sizes[key] = tuple(self.trunk(probe(x)).shape[-2:])
            self.train(was_training)
        return self._feature_sizes[key]


def _set_last_stride(backbone: nn.Module, stride: int) -> None:
    """Change the down-sampling stride of layer4's first block (1 keeps 2x resolution)."""
    block = backbone.layer4[0]
    for module in block.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (stride, stride)
        elif isinstance(module, nn.AvgPool2d) and module.stride in (2, (2, 2)):
            # avg-down shortcuts (ResNet-D): pooling would still halve the map.
            module.stride = stride
            module.kernel_size = stride


def create_backbone(
    arch: str,
    *,
    pretrained: bool,
    pretrained_path: str | None,
    arch_kwargs: dict | None,
    last_stride: int,
) -> nn.Module:
    """Build a timm ResNet-family trunk, loading ImageNet weights as configured.

    `pretrained_path` (a local file) wins over downloading; with `pretrained=True` and no path
    timm fetches the weights from its hub (needs internet).
    """
    kwargs = dict(arch_kwargs or {})
    if pretrained_path:
        path = Path(pretrained_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.pretrained_path not found: {path}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    try:
        backbone = timm.create_model(
            arch, pretrained=pretrained, num_classes=0, global_pool="", **kwargs
        )
    except RuntimeError as err:
        raise ValueError(f"cannot build timm model {arch!r} with {kwargs}: {err}") from err
    missing = [n for n in (*STEM_LAYERS, *TRUNK_LAYERS) if not hasattr(backbone, n)]
    if missing:
        raise ValueError(f"model.arch={arch!r} is not a ResNet-family model (missing {missing})")
    if last_stride not in (1, 2):
        raise ValueError(f"model.last_stride must be 1 or 2, got {last_stride}")
    if last_stride == 1:
        _set_last_stride(backbone, 1)
    return backbone
