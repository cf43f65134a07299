import pytest
import torch

from yolo_prune.errors import WeightsError
from yolo_prune.prune.masks import apply_masks_
from yolo_prune.prune.projections import project_global
from yolo_prune.prune.sparse import encode_tensor, is_sparse_file, load_sparse, save_sparse
from yolo_prune.prune.targets import select_targets


@pytest.mark.parametrize("ratio", [0.0, 0.9])
def test_roundtrip_is_exact_and_smaller_when_sparse(case, tmp_path, ratio):
    model = case.model()
    names = select_targets(model)
    params = dict(model.named_parameters())
    if ratio:
        try:
            masks = project_global({n: params[n] for n in names}, ratio)
        except Exception:
            masks = project_global({n: params[n] for n in names}, 0.8)
        apply_masks_(model, masks)
    state = model.state_dict()
    path = tmp_path / "m.sparse"
    stats = save_sparse(path, model, meta={"cfg": "text", "ratio": ratio})
    loaded, meta = load_sparse(path)
    assert meta == {"cfg": "text", "ratio": ratio}
    assert list(loaded) == list(state)
    for n, t in state.items():
        assert loaded[n].dtype == t.dtype
        torch.testing.assert_close(loaded[n], t, rtol=0, atol=0)
    assert stats["bytes"] == path.stat().st_size
    dense_file = tmp_path / "m.pt"
    torch.save(state, dense_file)
    # every pruned float32 weight saves at least 4 - 2 bytes (gaps) or 4 - 1/8 (bitmask)...
    pruned = sum(int((params[n] == 0).sum()) for n in names)
    assert stats["bytes"] <= dense_file.stat().st_size - 1.5 * pruned
    # ...and the one-blob layout costs less overhead than torch.save's record per tensor
    if ratio == 0.0:
        assert stats["bytes"] < dense_file.stat().st_size
    assert is_sparse_file(path)


def test_encoding_choice():
    dense = torch.randn(1000)
    assert encode_tensor(dense)["encoding"] == "dense"
    half = dense * (torch.arange(1000) % 2)
    assert encode_tensor(half)["encoding"] == "bitmask"
    rare = torch.zeros(10000)
    rare[::97] = 1.5
    rec = encode_tensor(rare)
    assert rec["encoding"] == "gaps" and rec["gaps"].dtype == torch.uint8
    far = torch.zeros(100000)
    far[[3, 50000]] = 2.0
    assert encode_tensor(far)["gaps"].dtype == torch.int32


def test_not_a_sparse_file(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"a": torch.ones(3)}, p)
    assert not is_sparse_file(p)
    with pytest.raises(WeightsError, match="not a yolo_prune sparse-weights file"):
        load_sparse(p)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="not a readable sparse-weights file"):
        load_sparse(junk)
