"""``secure_reid``: the keyed reversible anonymiser of the modified-SecureReID baseline."""

from __future__ import annotations

import pytest
import torch

from ppa.anonymize import (
    KprAnonymizer,
    ReversibleSettings,
    SecureReIDAnonymizer,
    create_anonymizer,
    mosaic,
)
from ppa.anonymize.secure_reid import wrong_keys
from ppa.config import load_config
from ppa.data.noise_keys import NoiseKeys

KEYS = NoiseKeys(bytes(range(32)))
OTHER_SITE = NoiseKeys(bytes(range(1, 33)))


def settings(**weights: float) -> ReversibleSettings:
    base = {"anonymization_weight": 1.0, "recovery_weight": 1.0, "wrong_key_weight": 1.0}
    return ReversibleSettings(width=8, depth=2, lr=1e-3, **(base | weights))


def images(n: int = 4, height: int = 32, width: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


def keys(n: int = 4, site: NoiseKeys = KEYS) -> torch.Tensor:
    return site.tensor([f"cam1/{i:04d}.jpg" for i in range(n)])


def anonymiser(seed: int = 0, **weights: float) -> SecureReIDAnonymizer:
    torch.manual_seed(seed)
    return SecureReIDAnonymizer(8, 32, settings(**weights))  # 8 px blocks at 32 px height


def zero_heads(anon: SecureReIDAnonymizer) -> None:
    """G_e = G_d = 0: the encoder and decoder pass their input through."""
    with torch.no_grad():
        for net in (anon.encoder, anon.decoder):
            net.head.weight.zero_()
            net.head.bias.zero_()


def test_output_is_per_image_keyed_and_deterministic() -> None:
    anon, x, k = anonymiser(), images(), keys()
    with torch.no_grad():
        first = anon(x, 1.0, k)
        assert torch.equal(first, anon(x, 1.0, k))
        alone = anon(x[2:3], 1.0, k[2:3])
        torch.testing.assert_close(alone, first[2:3], atol=1e-6, rtol=0)
        other = anon(x, 1.0, keys(site=OTHER_SITE))
    assert float((other - first).abs().mean()) > 1e-4  # another site's key: another image
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert torch.equal(anon(x, 0.0, k), x)  # level 0 leaves the images as they are


def test_keys_are_required() -> None:
    anon, x = anonymiser(), images(2)
    with pytest.raises(ValueError, match="secure_reid anonymizer needs per-image noise keys"):
        anon(x, 1.0, None)
    with pytest.raises(ValueError, match=r"got shape \(2, 0\)"):
        anon(x, 1.0, torch.zeros(2, 0, dtype=torch.uint8))


def test_wrong_keys_differ_in_every_bit() -> None:
    k = keys(3)
    assert torch.equal(wrong_keys(k) ^ k, torch.full_like(k, 0xFF))


def test_objective_hand_computed_with_pass_through_networks() -> None:
    # With both networks passing their input through, E(x) = x and D(a) = a, so:
    # anonymization = mean |x - mosaic(x, 8 px)|, recovery = 0, wrong key = 0.
    anon = anonymiser(anonymization_weight=2.0, recovery_weight=3.0, wrong_key_weight=5.0)
    zero_heads(anon)
    x, k = images(), keys()
    with torch.no_grad():
        terms = anon.objective(x, anon(x, 1.0, k), k, level=1.0)
    expected = (x - mosaic(x, 8)).abs().mean()
    torch.testing.assert_close(terms["anonymization"], expected)
    assert float(terms["recovery"]) == 0.0 and float(terms["wrong_key"]) == 0.0
    torch.testing.assert_close(terms["total"], 2.0 * expected)
    # The level scales the supervising mosaic's block: 1.5 x 8 = 12 px.
    with torch.no_grad():
        coarser = anon.objective(x, anon(x, 1.5, k), k, level=1.5)["anonymization"]
    torch.testing.assert_close(coarser, (x - mosaic(x, 12)).abs().mean())


def test_total_is_the_weighted_sum_of_the_terms() -> None:
    anon = anonymiser(anonymization_weight=2.0, recovery_weight=3.0, wrong_key_weight=5.0)
    x, k = images(), keys()
    terms = {name: t.detach() for name, t in anon.objective(x, anon(x, 1.0, k), k, 1.0).items()}
    assert all(float(terms[t]) > 0 for t in ("anonymization", "recovery", "wrong_key"))
    weighted = 2 * terms["anonymization"] + 3 * terms["recovery"] + 5 * terms["wrong_key"]
    torch.testing.assert_close(terms["total"], weighted)


def _grads(anon: SecureReIDAnonymizer, term: str) -> tuple[float, float]:
    x, k = images(), keys()
    anon.objective(x, anon(x, 1.0, k), k, level=1.0)[term].backward()

    def norm(net: torch.nn.Module) -> float:
        return sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None)

    return norm(anon.encoder), norm(anon.decoder)


@pytest.mark.parametrize(
    ("term", "encoder", "decoder"),
    [
        ("anonymization", True, False),  # the supervision trains the encoder only
        ("recovery", True, True),  # the encoder must keep what the decoder needs
        ("wrong_key", False, True),  # a wrong key: the decoder learns to add nothing
    ],
)
def test_each_term_reaches_exactly_its_networks(term: str, encoder: bool, decoder: bool) -> None:
    enc, dec = _grads(anonymiser(), term)
    assert (enc > 0) is encoder and (dec > 0) is decoder


def test_training_pulls_the_anonymised_view_to_its_supervision() -> None:
    anon = anonymiser(seed=1, anonymization_weight=10.0)
    optimizer = torch.optim.Adam(anon.parameters(), lr=3e-3)
    coarse = torch.rand(8, 3, 8, 4, generator=torch.Generator().manual_seed(1))
    x, k = torch.nn.functional.interpolate(coarse, size=(32, 16), mode="bilinear"), keys(8)
    target = mosaic(x, 8)
    with torch.no_grad():
        before = float((anon(x, 1.0, k) - target).abs().mean())
    for _ in range(150):
        terms = anon.objective(x, anon(x, 1.0, k), k, level=1.0)
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
    with torch.no_grad():
        after = float((anon(x, 1.0, k) - target).abs().mean())
    assert after < 0.5 * before
    assert after < 0.5 * float((x - target).abs().mean())  # nearer the mosaic than the raw


def test_config_builds_it_and_the_pose_guided_composition_is_refused() -> None:
    cfg = load_config(["anonymizer=secure_reid", "ppa=anon_only"])
    built = create_anonymizer(cfg.anonymizer)
    assert isinstance(built, SecureReIDAnonymizer)
    assert built.trainable and built.needs_keys
    assert built.settings.width == cfg.anonymizer.generator.width
    kpr = KprAnonymizer.from_config(cfg)
    assert kpr.pose_guided is False
    with pytest.raises(ValueError, match="secure_reid anonymises the whole image at one level"):
        KprAnonymizer.from_config(load_config(["anonymizer=secure_reid", "ppa=full"]))


def test_the_composition_trains_it_at_the_medium_level() -> None:
    cfg = load_config(["anonymizer=secure_reid", "ppa=anon_only", "anonymizer.levels.medium=0.5"])
    kpr = KprAnonymizer.from_config(cfg)
    zero_heads(kpr.anonymizer)
    x, k = images(2, 288 // 4, 144 // 4), keys(2)  # 1/4 scale: the 24 px block becomes 6 px
    kp = torch.zeros(2, 17, 3)
    result = kpr(x, kp, k)
    terms = kpr.training_loss(x, result, k)
    torch.testing.assert_close(terms["anonymization"], (x - mosaic(x, 3)).abs().mean())


@pytest.mark.slow
def test_central_training_trains_it_and_evaluation_uses_the_trained_networks(
    tiny_sysu_root, tmp_path
) -> None:
    """ppa-train with the baseline's settings, then ppa-evaluate of its checkpoint."""
    import json

    from ppa.checkpoint import load_checkpoint
    from ppa.cli import evaluate
    from ppa.cli.train import train

    from conftest import tiny_overrides

    overrides = tiny_overrides(
        tiny_sysu_root,
        tmp_path,
        "ppa=anon_only",
        "anonymizer=secure_reid",
        "train.epochs=2",
        "train.max_batches_per_epoch=3",
        "train.checkpoint_every=1",
        f"anonymizer.key_dir={tmp_path / 'keys'}",
    )
    last = train(load_config(overrides))
    saved = load_checkpoint(last)["anonymizer"]
    assert any(k.startswith("anonymizer.encoder.") for k in saved)
    assert any(k.startswith("anonymizer.decoder.") for k in saved)
    history = json.loads((last.parent.parent / "train_history.json").read_text())
    assert all(h["loss_anonymizer_recovery"] > 0 for h in history)
    # The second epoch moved both networks.
    first = load_checkpoint(last.parent / "epoch_0001.pt")["anonymizer"]
    for net in ("encoder", "decoder"):
        key = f"anonymizer.{net}.head.weight"
        assert not torch.equal(first[key], saved[key]), net
    assert (tmp_path / "keys" / "central.noise-key").is_file()  # central training's own key

    metrics = json.loads(evaluate.run(load_config([*overrides, f"checkpoint={last}"])).read_text())
    assert "anon-anon" in json.dumps(metrics)
    assert (tmp_path / "keys" / "evaluator.noise-key").is_file()  # the test set's key


def test_settings_are_checked_and_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"recovery_weight=-1\.0"):
        settings(recovery_weight=-1.0)
    with pytest.raises(ValueError, match="width >= 1"):
        ReversibleSettings(0, 2, 1e-3, 1.0, 1.0, 1.0)
    with pytest.raises(KeyError, match=r"anonymizer\.generator\.wrong_key_weight"):
        ReversibleSettings.from_config(
            {"width": 8, "depth": 2, "lr": 1e-3, "anonymization_weight": 1, "recovery_weight": 1}
        )
    generator = load_config(["anonymizer=secure_reid"]).anonymizer.generator
    read = ReversibleSettings.from_config(generator)
    assert isinstance(read.width, int) and isinstance(read.anonymization_weight, float)


def test_privacy_measurement_scores_recovery_with_and_without_the_key() -> None:
    from ppa.anonymize.measures import psnr, ssim
    from ppa.data.loader import Batch
    from ppa.privacy_report.measure import measure_batches
    from ppa.privacy_report.output import format_markdown

    cfg = load_config(["anonymizer=secure_reid", "ppa=anon_only"])
    torch.manual_seed(3)
    kpr = KprAnonymizer.from_config(cfg).eval()
    n = 6
    x, k = images(n, 72, 36), keys(n)
    batch = Batch(
        images=x,
        keypoints=torch.zeros(n, 17, 3),
        labels=torch.zeros(n, dtype=torch.long),
        modality=torch.arange(n) % 2,
        cams=torch.ones(n, dtype=torch.long),
        noise_keys=k,
        indices=torch.arange(n),
    )
    scores = measure_batches([batch], kpr, torch.device("cpu"), None, 0).scores
    inner = kpr.anonymizer
    with torch.no_grad():
        anon = kpr(x, batch.keypoints, k).images
        right, wrong = inner.recover(anon, k), inner.recover(anon, wrong_keys(k))
    assert scores["recovery_psnr"] == pytest.approx(float(psnr(x, right).mean()), rel=1e-5)
    assert scores["recovery_ssim"] == pytest.approx(float(ssim(x, right).mean()), rel=1e-5)
    assert scores["wrong_key_psnr"] == pytest.approx(float(psnr(x, wrong).mean()), rel=1e-5)
    assert scores["wrong_key_ssim"] == pytest.approx(float(ssim(x, wrong).mean()), rel=1e-5)
    assert scores["recovery_psnr"] != pytest.approx(scores["wrong_key_psnr"])

    report = {
        "utility_group": None,
        "dataset": {"images": 0},
        "photos": [],
        "rows": [{"label": "secure", "dataset": scores}],
    }
    note = format_markdown(report)
    assert f"PSNR {scores['recovery_psnr']:.2f} dB" in note
    assert f"with wrong keys {scores['wrong_key_psnr']:.2f} dB" in note

    mosaic_kpr = KprAnonymizer.from_config(load_config(["anonymizer=mosaic", "ppa=anon_only"]))
    plain = measure_batches([batch], mosaic_kpr, torch.device("cpu"), None, 0).scores
    assert not any(key.startswith(("recovery", "wrong_key")) for key in plain)
    with pytest.raises(TypeError, match="not reversible"):
        mosaic_kpr.anonymizer.recover(x, k)
