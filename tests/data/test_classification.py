"""In-memory classification data: which dataset a folder holds, its fixed splits, and the
shuffled, augmented training batches (padded crops, flips, normalisation)."""

from __future__ import annotations

import pytest
import torch

from yolo_prune.data.classification import ShuffledBatches, classification_dataset, load_splits
from yolo_prune.errors import DataError


def _crops(img: torch.Tensor, shift: int, *, flip: bool) -> list[torch.Tensor]:
    """Every zero-padded crop of ``img`` [C, H, W] by up to ``shift`` px (and its mirror)."""
    _, h, w = img.shape
    padded = torch.nn.functional.pad(img, (shift,) * 4)
    out = []
    for dy in range(2 * shift + 1):
        for dx in range(2 * shift + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            out += [crop, crop.flip(-1)] if flip else [crop]
    return out


def test_colour_batches_are_padded_crops_and_flips_with_their_labels():
    gen = torch.Generator().manual_seed(1)
    images = torch.rand((10, 3, 8, 8), generator=gen) + 0.1  # no zeros but the padding
    labels = torch.arange(10)
    batches = ShuffledBatches(images, labels, batch_size=4, shift=2, seed=3, flip=True)
    seen, flipped = [], 0
    for x, y in batches:
        assert x.shape == (len(y), 3, 8, 8) and x.dtype == images.dtype
        for img, label in zip(x, y, strict=True):
            candidates = _crops(images[label], 2, flip=True)
            assert any(torch.equal(img, c) for c in candidates), int(label)
            unflipped = _crops(images[label], 2, flip=False)
            flipped += not any(torch.equal(img, c) for c in unflipped)
        seen += y.tolist()
    assert sorted(seen) == labels.tolist()  # every image once per epoch
    assert 0 < flipped < 10  # flips happen, not always


def test_one_channel_draws_and_pixels_are_unchanged():
    """MNIST runs keep their numbers: permutation, then dy, dx per batch, no flip draws."""
    images = torch.rand((9, 1, 6, 6))
    labels = torch.arange(9)
    got = list(ShuffledBatches(images, labels, batch_size=4, shift=2, seed=7))
    gen = torch.Generator().manual_seed(7)
    perm = torch.randperm(9, generator=gen)
    for i, (x, y) in zip(range(0, 9, 4), got, strict=True):
        idx = perm[i : i + 4]
        dy = torch.randint(0, 5, (len(idx),), generator=gen)
        dx = torch.randint(0, 5, (len(idx),), generator=gen)
        padded = torch.nn.functional.pad(images[idx], (2, 2, 2, 2))
        expected = torch.stack(
            [p[:, a : a + 6, b : b + 6] for p, a, b in zip(padded, dy, dx, strict=True)]
        )
        torch.testing.assert_close(x, expected, rtol=0, atol=0)
        assert torch.equal(y, labels[idx])


def test_normalisation_is_per_channel():
    images = torch.rand((4, 3, 5, 5))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    batches = ShuffledBatches(
        images, torch.zeros(4, dtype=torch.long), batch_size=4, shift=0, seed=0, mean=mean, std=std
    )
    x = batches.augment(images)
    expected = (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(x, expected)


def test_cifar_splits_are_shuffled_once_and_fixed(tiny_cifar10):
    splits = load_splits(tiny_cifar10, val_size=10)
    assert [len(splits[k][0]) for k in ("train", "val", "test")] == [30, 10, 20]
    assert splits["train"][0].shape[1:] == (3, 32, 32)
    # the tarball is class-sorted; the held-out images must not be the last class only
    assert len(set(splits["val"][1].tolist())) > 1
    assert len(set(splits["test"][1][:5].tolist())) > 1
    again = load_splits(tiny_cifar10, val_size=10, max_images=4)
    assert torch.equal(again["val"][1], splits["val"][1][:4])  # same split every run


def test_the_dataset_is_recognised_from_its_files(tmp_path, shared_data):
    assert classification_dataset(shared_data / "mnist") == "MNIST"
    assert classification_dataset(shared_data / "coco128") is None
    with pytest.raises(DataError, match="not a classification dataset: expected MNIST"):
        load_splits(tmp_path, val_size=1)


def _run(batches: ShuffledBatches, *, cut: int | None, start=(0, 0), stop: int | None = None):
    """What the training loop does with ``batches``: 4 epochs from ``start`` (epoch, batches
    into it), each cut after ``cut`` batches (None: whole). Returns the batches and, when it
    stopped after ``stop`` of them, the position to resume at (as a checkpoint gives it)."""
    out = []
    for epoch in range(start[0], 4):
        taken = start[1] if epoch == start[0] else 0
        batches.set_epoch(skip_steps=taken)
        for batch in batches:
            out.append(batch)
            taken += 1
            if len(out) == stop:
                return out, ((epoch + 1, 0) if taken == (cut or 3) else (epoch, taken))
            if taken == cut:
                break
    return out, None


@pytest.mark.parametrize("cut", [None, 2], ids=["whole-epochs", "cut-epochs"])
@pytest.mark.parametrize("stop", [1, 3, 4])
def test_a_restored_position_continues_the_batches_of_an_uninterrupted_run(cut, stop):
    """Saved after ``stop`` batches (in mid-epoch or at an epoch's end; whole epochs end in a
    batch of 2) and restored into fresh batches: the same images, augmentations and order
    follow as in one run."""
    images, labels = torch.rand((10, 1, 5, 5)), torch.arange(10)

    def fresh() -> ShuffledBatches:
        return ShuffledBatches(images, labels, batch_size=4, shift=1, seed=5, flip=True)

    whole, _ = _run(fresh(), cut=cut)
    stopped = fresh()
    first, position = _run(stopped, cut=cut, stop=stop)
    resumed = fresh()
    resumed.load_state_dict(stopped.state_dict())
    rest, _ = _run(resumed, cut=cut, start=position)
    assert len(first) + len(rest) == len(whole)
    for (x, y), (a, b) in zip(first + rest, whole, strict=True):
        assert torch.equal(x, a) and torch.equal(y, b)


def test_a_position_is_refused_in_other_batches():
    images, labels = torch.rand((10, 1, 5, 5)), torch.arange(10)
    batches = ShuffledBatches(images, labels, batch_size=4, shift=1, seed=5)
    next(iter(batches))
    state = batches.state_dict()
    with pytest.raises(ValueError, match="the saved position is in batches of 4, these are "):
        ShuffledBatches(images, labels, batch_size=5, shift=1, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="skip_steps=2, but the position holds 1 batches"):
        batches.load_state_dict(state)
        batches.set_epoch(skip_steps=2)


def test_the_ranks_parts_of_each_batch_make_the_one_process_batch():
    """Two ranks draw the augmentations of the whole batch and keep their part; the last batch
    of 3 goes 2 + 1. With a last batch smaller than the ranks, that batch is left out."""
    images, labels = torch.rand((11, 1, 5, 5)), torch.arange(11)

    def batches(rank: int | None) -> ShuffledBatches:
        b = ShuffledBatches(images, labels, batch_size=4, shift=1, seed=2, flip=True)
        if rank is not None:
            b.shard(rank=rank, world_size=2)
        return b

    one, ranks = batches(None), [batches(0), batches(1)]
    shares = []
    for whole, *parts in zip(one, *ranks, strict=True):
        assert torch.equal(torch.cat([x for x, _ in parts]), whole[0])
        assert torch.equal(torch.cat([y for _, y in parts]), whole[1])
        shares.append([r.share for r in ranks])
    assert shares == [[0.5, 0.5], [0.5, 0.5], [2 / 3, 1 / 3]]
    assert len(batches(0)) == 3
    nine = ShuffledBatches(images[:9], labels[:9], batch_size=4, shift=0, seed=0)
    nine.shard(rank=1, world_size=2)
    assert len(nine) == len(list(nine)) == 2  # the last batch of 1 has no part for rank 1
