"""The PPA encoder: modality stems, shared trunk, GeM, BNNeck, classifier, DCMA offsets."""

from __future__ import annotations

import copy
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from ppa.data.records import MODALITIES, Modality
from ppa.model.classifier import CLASSIFIERS, create_classifier
from ppa.model.modality_norm import modality_norms, modality_routing, split_batch_norms
from ppa.model.neck import ModalityBatchNorm1d
from ppa.model.pooling import GeM, keypoint_pool
from ppa.model.routing import route_by_modality

logger = logging.getLogger(__name__)

STEM_LAYERS = ("conv1", "bn1", "act1", "maxpool")
TRUNK_LAYERS = ("layer1", "layer2", "layer3", "layer4")
# model.norm: "batch" (the reference recipe) or "group" (per-sample normalisation: what DP-SGD
# needs, since BatchNorm mixes the records of a batch; see docs/privacy.md).
NORMS = ("batch", "group")
# model.neck_stats: BNNeck statistics per modality ("modality") or one set ("shared").
NECK_STATS = ("modality", "shared")
# model.trunk_stats: the trunk's BatchNorm statistics per modality or one set
# (ppa/model/modality_norm.py).
TRUNK_STATS = ("modality", "shared")
# model.stems: one stem per modality (the two-stream design) or one stem for both, which is
# then the first part of the shared trunk (its BatchNorm split per modality like the trunk's).
STEMS = ("modality", "shared")


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
        norm: str = "batch",
        neck_stats: str = "modality",
        trunk_stats: str = "shared",
        trunk_affine: str = "shared",
        classifier: str = "learned",
        cosine_scale: float = 16.0,
        cosine_margin: float = 0.0,
        classifier_rank: int = 16,
        stems: str = "modality",
    ):
        super().__init__()
        if stems not in STEMS:
            raise ValueError(f"model.stems must be one of {STEMS}, got {stems!r}")
        if classifier not in CLASSIFIERS:
            raise ValueError(f"model.classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        if neck_stats not in NECK_STATS:
            raise ValueError(f"model.neck_stats must be one of {NECK_STATS}, got {neck_stats!r}")
        if trunk_stats not in TRUNK_STATS:
            raise ValueError(f"model.trunk_stats must be one of {TRUNK_STATS}, got {trunk_stats!r}")
        if norm not in NORMS:
            raise ValueError(f"model.norm must be one of {NORMS}, got {norm!r}")
        if trunk_affine != "shared" and (norm, trunk_stats) != ("batch", "modality"):
            raise ValueError(
                f"model.trunk_affine={trunk_affine} splits the per-modality trunk norms' affine; "
                f"it needs model.norm=batch and model.trunk_stats=modality, got {norm} and "
                f"{trunk_stats}"
            )
        missing = [n for n in (*STEM_LAYERS, *TRUNK_LAYERS) if not hasattr(backbone, n)]
        if missing:
            raise ValueError(
                f"backbone {type(backbone).__name__} is not a ResNet-family model "
                f"(missing {missing})"
            )
        self.modalities = tuple(modalities)
        trunk_layers = TRUNK_LAYERS
        if stems == "shared":
            # No modality-specific part below the offsets: the stem joins the trunk, so the
            # federation averages it over all sites (ppa/wire.py: a `trunk.` key is shared).
            self.stems = nn.ModuleDict()
            trunk_layers = (*STEM_LAYERS, *TRUNK_LAYERS)
        else:
            stem = nn.Sequential(OrderedDict((n, getattr(backbone, n)) for n in STEM_LAYERS))
            self.stems = nn.ModuleDict({m.value: copy.deepcopy(stem) for m in self.modalities})
        self.trunk = nn.Sequential(OrderedDict((n, getattr(backbone, n)) for n in trunk_layers))
        if norm == "batch" and trunk_stats == "modality":
            split_batch_norms(self.trunk, self.modalities, trunk_affine)
        # The trunk's per-modality norms, told each row's modality for every pass.
        self._trunk_norms = tuple(modality_norms(self.trunk))
        dim = int(backbone.num_features)
        self.num_features = dim
        self.num_classes = int(num_classes)
        self.pool = GeM(gem_p, learnable=learn_gem_p)
        self.norm = norm
        # With norm="group" the neck normalises each sample over all its channels (one group,
        # a LayerNorm with per-channel affine): no batch statistics, so per-sample gradients
        # exist.
        # With norm="batch" and neck_stats="modality" the BNNeck keeps its statistics per
        # modality (ppa/model/neck.py says why).
        self.neck: nn.Module
        if norm == "group":
            self.neck = nn.GroupNorm(1, dim)
        elif neck_stats == "modality":
            self.neck = ModalityBatchNorm1d(dim, self.modalities)
        else:
            self.neck = nn.BatchNorm1d(dim)
        # BNNeck: the bias is frozen at 0 so the pre-BN (triplet) and post-BN (identity)
        # spaces stay aligned.
        self.neck.bias.requires_grad_(False)
        self.classifier = create_classifier(
            classifier,
            dim,
            num_classes,
            cosine_scale=cosine_scale,
            cosine_margin=cosine_margin,
            rank=classifier_rank,
        )
        self.offsets = ModalityOffsets(self.modalities, dim)
        nn.init.constant_(self.neck.weight, 1.0)
        self._feature_sizes: dict[tuple[int, int], tuple[int, int]] = {}

    @property
    def identity_margin(self) -> float:
        """What the identity loss subtracts from the target logit (a cosine classifier's
        margin in logit units; 0 for a linear classifier)."""
        return getattr(self.classifier, "target_margin", 0.0)

    # The timm-style model contract -------------------------------------------------------
    def forward_stem(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Route each image through its modality's stem (a shared stem is part of the trunk)."""
        if not self.stems:
            return images
        return route_by_modality(images, modality, self.stems, self.modalities)

    def forward_features(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), normalised -> trunk feature map (B, D, h, w)."""
        x = self.forward_stem(images, modality)
        if not self._trunk_norms:
            return self.trunk(x)
        with modality_routing(self._trunk_norms, modality):
            return self.trunk(x)

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
        if isinstance(self.neck, ModalityBatchNorm1d):
            neck = self.neck(corrected, modality)
        else:
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
            param = next(self.parameters())
            was_training = self.training
            self.eval()
            with torch.no_grad():
                x = torch.zeros(1, 3, *key, device=param.device, dtype=param.dtype)
                modality = torch.zeros(1, dtype=torch.long, device=param.device)
                self._feature_sizes[key] = tuple(self.forward_features(x, modality).shape[-2:])
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
    norm: str = "batch",
    norm_groups: int = 32,
) -> nn.Module:
    """Build a timm ResNet-family trunk, loading ImageNet weights as configured.

    `pretrained_path` (a local file) wins over downloading; with `pretrained=True` and no path
    timm fetches the weights from its hub (needs internet). With ``norm="group"`` every
    BatchNorm becomes a GroupNorm and the in-place activations / residual adds become
    out-of-place (`make_per_sample`), so opacus's per-sample-gradient hooks work.
    """
    if norm not in NORMS:
        raise ValueError(f"model.norm must be one of {NORMS}, got {norm!r}")
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
    if norm == "group":
        make_per_sample(backbone, norm_groups, arch=arch)
    return backbone


# Per-sample (DP-compatible) construction --------------------------------------------------


def group_count(channels: int, groups: int) -> int:
    """Groups for a GroupNorm over `channels`: the largest common divisor with `groups`."""
    return math.gcd(int(channels), int(groups))


def batch_to_group_norm(module: nn.Module, groups: int) -> int:
    """Replace every BatchNorm1d/2d below `module` by a GroupNorm; returns how many.

    The affine weight/bias are copied, so ImageNet weights and timm's zero-init of the last
    norm of each residual branch carry over (the running statistics have no GroupNorm
    counterpart and are dropped).
    """
    if groups < 1:
        raise ValueError(f"model.norm_groups must be >= 1, got {groups}")
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            gn = nn.GroupNorm(
                group_count(child.num_features, groups),
                child.num_features,
                eps=child.eps,
                affine=child.affine,
            )
            if child.affine:
                with torch.no_grad():
                    gn.weight.copy_(child.weight)
                    gn.bias.copy_(child.bias)
                gn.weight.requires_grad_(child.weight.requires_grad)
                gn.bias.requires_grad_(child.bias.requires_grad)
            setattr(module, name, gn)
            replaced += 1
        else:
            replaced += batch_to_group_norm(child, groups)
    return replaced


class OutOfPlace(nn.Module):
    """Runs the wrapped module (if any) and returns a fresh tensor.

    timm's residual blocks end with ``x = self.drop_path(x); x += shortcut``. When `x` is the
    output of a hooked norm layer, autograd's backward-hook wrapper makes it a view that must
    not be modified in place; putting this module in the ``drop_path`` slot hands the in-place
    add a tensor of its own. It holds no parameters, so state dicts are unchanged.
    """

    def __init__(self, inner: nn.Module | None = None):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inner is not None:
            x = self.inner(x)
        return x.clone()


def make_per_sample(backbone: nn.Module, norm_groups: int, *, arch: str = "") -> None:
    """Make a timm ResNet usable with per-sample-gradient hooks (opacus), in place.

    BatchNorm -> GroupNorm (`batch_to_group_norm`), in-place activations -> out-of-place, and
    an `OutOfPlace` clone before each block's in-place residual add.
    """
    batch_to_group_norm(backbone, norm_groups)
    for module in backbone.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    for layer in TRUNK_LAYERS:
        for block in getattr(backbone, layer).children():
            if not isinstance(block, (BasicBlock, Bottleneck)) or not hasattr(block, "drop_path"):
                raise ValueError(
                    f"model.norm=group supports timm ResNet BasicBlock/Bottleneck blocks; "
                    f"model.arch={arch!r} has a {type(block).__name__} in {layer}"
                )
            if not isinstance(block.drop_path, OutOfPlace):
                block.drop_path = OutOfPlace(block.drop_path)
