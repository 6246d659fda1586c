"""Secret noise keys: the site key file (made once, 0600, read back, validated), per-image keys
from it, reproducible noise for the key holder and other noise under another key; the key
stays out of what a site returns and out of checkpoints."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from client.site import SiteTrainer
from ppa.anonymize import NoiseAnonymizer
from ppa.anonymize.factory import noise_keys_for
from ppa.cli.train import train
from ppa.config import load_config
from ppa.data.noise_keys import (
    CENTRAL,
    EVALUATOR,
    KEY_DIR_ENV,
    NoiseKeyError,
    NoiseKeys,
    create_site_key,
    key_file,
    read_site_key,
    site_key,
)
from ppa.node_config import SiteSpec
from ppa.wire import global_keys, pack

from conftest import tiny_overrides

PATH = "cam1/0001/0001.jpg"


def noise_of(keys: NoiseKeys, *paths: str, shape=(3, 32, 16)) -> torch.Tensor:
    """The noise the anonymiser adds to mid-grey images at `paths` (sigma 0.1: no clipping)."""
    images = torch.full((len(paths), *shape), 0.5)
    return NoiseAnonymizer(0.1, 288)(images, 1.0, keys.tensor(paths)) - images


def test_same_path_same_key_gives_the_same_noise(tmp_path: Path) -> None:
    first = NoiseKeys.from_file(tmp_path / "site.noise-key")
    again = NoiseKeys.from_file(tmp_path / "site.noise-key")  # a later run reads it back
    assert torch.equal(noise_of(first, PATH), noise_of(again, PATH))
    assert first.key_of(PATH) == again.key_of(PATH) and len(first.key_of(PATH)) == 32


def five_sigma(n: int) -> float:
    """A bound that unrelated draws of `n` values stay inside but for a 1-in-a-million chance.

    The keys come from the OS's entropy, so these tests see new draws every run: a fixed bound
    near the statistic's spread would fail now and then (0.05 on 1536 values was two sigma).
    The sample correlation and mean of `n` independent standard normals have spread
    1/sqrt(n), the sample standard deviation 1/sqrt(2n).
    """
    return 5.0 / n**0.5


def test_same_path_under_another_key_gives_other_noise(tmp_path: Path) -> None:
    mine = NoiseKeys.from_file(tmp_path / "a.noise-key")
    theirs = NoiseKeys.from_file(tmp_path / "b.noise-key")
    assert mine.key_of(PATH) != theirs.key_of(PATH)
    shape = (3, 128, 64)
    a, b = (noise_of(keys, PATH, shape=shape).flatten() for keys in (mine, theirs))
    assert not torch.equal(a, b)
    # Unrelated, not merely different: no correlation between the two draws.
    bound = five_sigma(a.numel())
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < bound
    # And other paths under one key are unrelated too.
    c = noise_of(mine, "cam1/0001/0002.jpg", shape=shape).flatten()
    assert abs(float(torch.corrcoef(torch.stack([a, c]))[0, 1])) < bound
    # A correlated pair does break the bound: it is tight enough to mean something.
    assert abs(float(torch.corrcoef(torch.stack([a, a + 5 * c]))[0, 1])) > bound


def test_the_noise_is_standard_normal_under_a_real_key(tmp_path: Path) -> None:
    keys = NoiseKeys.from_file(tmp_path / "site.noise-key")
    z = noise_of(keys, *(f"img{i}.jpg" for i in range(8)), shape=(3, 64, 32)) / 0.1
    assert float(z.mean()) == pytest.approx(0.0, abs=five_sigma(z.numel()))
    assert float(z.std()) == pytest.approx(1.0, abs=five_sigma(2 * z.numel()))


def test_key_file_is_made_on_first_use_with_mode_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keys" / "cam3.noise-key"
    key = site_key(path)
    assert path.read_bytes() == key and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    made = path.stat().st_mtime_ns
    assert site_key(path) == key and path.stat().st_mtime_ns == made  # read, not rewritten
    # A process that lost the race to make it gets the winner's key, and leaves no litter.
    assert create_site_key(path) == key
    assert sorted(p.name for p in path.parent.iterdir()) == ["cam3.noise-key"]
    assert site_key(tmp_path / "other.noise-key") != key


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_key_file_of_the_wrong_size_is_a_clear_error(tmp_path: Path, size: int) -> None:
    path = tmp_path / "site.noise-key"
    path.write_bytes(b"k" * size)
    with pytest.raises(NoiseKeyError, match=rf"{path}.* holds {size} bytes.* 32"):
        NoiseKeys.from_file(path)
    assert path.read_bytes() == b"k" * size  # never replaced: that would change every noise


def test_an_unreadable_key_file_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(NoiseKeyError, match=str(tmp_path)):
        read_site_key(tmp_path)  # a directory


def test_a_world_readable_key_file_is_reported(tmp_path: Path, caplog) -> None:
    path = tmp_path / "site.noise-key"
    key = site_key(path)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="ppa.data.noise_keys"):
        assert read_site_key(path) == key
    assert any("readable by other users" in r.getMessage() for r in caplog.records)
    assert key.hex() not in caplog.text


def test_the_key_stays_out_of_reprs(tmp_path: Path) -> None:
    keys = NoiseKeys.from_file(tmp_path / "site.noise-key")
    key = read_site_key(tmp_path / "site.noise-key")
    for text in (repr(keys), str(keys)):
        assert key.hex() not in text and repr(key) not in text
    with pytest.raises(NoiseKeyError, match="32 bytes"):
        NoiseKeys(b"short")


def test_where_keys_live(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(KEY_DIR_ENV, raising=False)
    monkeypatch.setenv("PPA_WORKDIR", str(tmp_path))
    noise = load_config(["anonymizer=noise"]).anonymizer
    assert key_file(noise, "cam1") == tmp_path / "outputs" / "keys" / "cam1.noise-key"
    monkeypatch.setenv(KEY_DIR_ENV, str(tmp_path / "state"))
    assert key_file(noise, EVALUATOR) == tmp_path / "state" / "evaluator.noise-key"
    mine = load_config(["anonymizer=noise", f"anonymizer.key_dir={tmp_path / 'mine'}"])
    assert key_file(mine.anonymizer, "cam1") == tmp_path / "mine" / "cam1.noise-key"
    shared = load_config(["anonymizer=noise", "anonymizer.key_file=gallery.key"])
    assert key_file(shared.anonymizer, "cam1") == tmp_path / "gallery.key"
    with pytest.raises(ValueError, match="plain name"):
        key_file(noise, "../cam1")


def test_only_the_noise_anonymiser_makes_a_key(tmp_path: Path) -> None:
    mosaic = load_config(["anonymizer=mosaic"])
    assert noise_keys_for(mosaic, "cam1") is None
    cfg = load_config(["anonymizer=noise", f"anonymizer.key_dir={tmp_path}"])
    site, evaluator = noise_keys_for(cfg, "cam1"), noise_keys_for(cfg, EVALUATOR)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cam1.noise-key",
        "evaluator.noise-key",
    ]
    # A site and the evaluator anonymise the same path differently.
    assert site.key_of(PATH) != evaluator.key_of(PATH)


def _bytes_of(value) -> bytes:
    if isinstance(value, np.ndarray):
        return value.tobytes()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous().numpy().tobytes()
    return repr(value).encode()


def _noise_config(root: Path, tmp_path: Path, keys: Path, *extra: str):
    """Tiny settings with the noise anonymiser keeping its keys in `keys`."""
    return load_config(
        tiny_overrides(
            root,
            tmp_path,
            "anonymizer=noise",
            f"anonymizer.key_dir={keys}",
            "train.max_batches_per_epoch=1",
            *extra,
        )
    )


def test_the_site_key_stays_out_of_a_sites_reply(
    tiny_sysu_root: Path, tmp_path: Path, caplog
) -> None:
    keys = tmp_path / "keys"
    cfg = _noise_config(tiny_sysu_root, tmp_path, keys)
    with caplog.at_level(logging.DEBUG):
        trainer = SiteTrainer(cfg, SiteSpec(None, None, None, 0, 6))
        state = trainer.model.state_dict()
        result = trainer.train_round(
            pack(state, global_keys(state)),
            None,
            server_round=1,
            local_epochs=1,
            half_precision=False,
            state=RecordDict(),
        )
    path = keys / f"{trainer.site.name}.noise-key"
    assert trainer.setup.noise_keys.source == str(path)
    key = read_site_key(path)
    sent = [*result.arrays.values(), result.proto_sum, result.proto_count, result.metrics]
    assert all(key not in _bytes_of(v) for v in sent)
    assert key.hex() not in caplog.text
    # The anonymiser module holds no key either: nothing of it reaches a state dict.
    assert all(key not in _bytes_of(v) for v in trainer.anonymizer.state_dict().values())


def test_the_keys_stay_out_of_a_checkpoint(tiny_sysu_root: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    cfg = _noise_config(tiny_sysu_root, tmp_path, keys, "train.epochs=1")
    checkpoint = train(cfg).read_bytes()
    owners = sorted(p.name for p in keys.iterdir())
    assert f"{CENTRAL}.noise-key" in owners
    for name in owners:
        key = read_site_key(keys / name)
        assert key not in checkpoint and key.hex().encode() not in checkpoint
