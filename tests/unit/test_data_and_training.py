from pathlib import Path

import numpy as np
import pytest

from lifeloop.datasets import load_arrays
from lifeloop.errors import DataError
from lifeloop.export import load
from lifeloop.retrain import ImageFolder, scan, train


def test_digits_are_a_real_image_folder(digits: ImageFolder) -> None:
    assert digits.labels == tuple(str(i) for i in range(10))
    assert len(digits.samples) == 1797
    assert scan(digits.root) == digits


def test_held_out_split_is_stratified_and_stable(digits: ImageFolder) -> None:
    train_set, held = digits.split(0.2, seed=0)
    assert not {s.path for s in train_set} & {s.path for s in held}
    assert len(train_set) + len(held) == len(digits.samples)
    per_class = np.bincount([s.label for s in held], minlength=10)
    assert per_class.min() >= 30
    assert digits.split(0.2, seed=0) == (train_set, held)


def test_non_image_file_in_a_data_folder_is_named(tmp_path: Path, digits: ImageFolder) -> None:
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "x.png").write_bytes(digits.samples[0].path.read_bytes())
    (tmp_path / "b" / "notes.txt").write_text("hello")
    with pytest.raises(
        DataError, match=r"1 entries that are not images, e.g. .*notes.txt; move them out"
    ):
        scan(tmp_path)


def test_image_that_cannot_be_decoded_is_named(
    tmp_path: Path, digits: ImageFolder, trained
) -> None:
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
    (tmp_path / "a" / "ok.png").write_bytes(digits.samples[0].path.read_bytes())
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png")
    folder = scan(tmp_path)
    with pytest.raises(DataError, match="broken.png is not a readable image"):
        load_arrays(list(folder.samples), trained.checkpoint.preprocessing)


def test_training_learns_the_digits_and_saves_a_lifeloop_checkpoint(trained, held_out) -> None:
    assert trained.holdout_accuracy >= 0.9
    loaded = load(trained.path)
    assert loaded.arch == "small_cnn" and loaded.labels == tuple(str(i) for i in range(10))
    assert loaded.training["epochs"] == 3 and sum(loaded.training["train_counts"].values()) > 1400
    x, y = held_out
    import torch

    with torch.no_grad():
        accuracy = (loaded.build_model()(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert accuracy == pytest.approx(trained.holdout_accuracy)


def test_zero_epochs_is_refused(digits: ImageFolder, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="epochs must be >= 1, got 0"):
        train(digits.root, arch="small_cnn", epochs=0, out=tmp_path / "x.pt")
