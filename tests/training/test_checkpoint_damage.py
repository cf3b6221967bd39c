"""A damaged checkpoint raises CheckpointError naming the file, never torch's weights_only=False advice."""

import io

import pytest
import torch
from torch import nn

from mtlkit.training import checkpoint as ck


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "last.pt"
    ck.save_checkpoint({"model": {"w": torch.randn(64, 64)}, "counters": {"epoch": 1}}, path)
    return path


def flip(data: bytes, position: int) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= 0x10
    return bytes(damaged)


def damage_cases(data: bytes) -> dict[str, bytes]:
    pickled = data.index(b"data.pkl") + 200  # inside the pickle record
    tensor = len(data) // 2  # inside the tensor's bytes, which torch itself never checks
    module = io.BytesIO()
    torch.save({"format": ck.FORMAT_VERSION, "m": nn.Linear(2, 2)}, module)
    return {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "last bytes cut": data[:-10],
        "bit flipped in the pickle": flip(data, pickled),
        "bit flipped in a tensor": flip(data, tensor),
        "bit flipped in the zip directory": flip(data, len(data) - 30),
        "a text file": b"hello\n",
        "a pickled module": module.getvalue(),
    }


def test_every_kind_of_damage_is_a_checkpoint_error_naming_the_file(good, tmp_path):
    cases = damage_cases(good.read_bytes())
    for name, blob in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pt"
        path.write_bytes(blob)
        with pytest.raises(ck.CheckpointError) as caught:
            ck.load_checkpoint(path)
        message = str(caught.value)
        assert path.name in message, name
        assert "weights_only" not in message, name
        if name != "a pickled module":
            assert "corrupt" in message and ("truncated" in message or "checksum" in message), (name, message)


def test_a_bit_flip_in_tensor_data_would_load_silently_without_the_checksum(good, tmp_path):
    """The reason for the zip checksum check: torch.load itself returns the altered tensor."""
    damaged = tmp_path / "flipped.pt"
    damaged.write_bytes(flip(good.read_bytes(), len(good.read_bytes()) // 2))
    original = torch.load(good, weights_only=True)["model"]["w"]
    assert not torch.equal(torch.load(damaged, weights_only=True)["model"]["w"], original)
    with pytest.raises(ck.CheckpointError, match="fails its checksum"):
        ck.load_checkpoint(damaged)


def test_an_intact_checkpoint_still_loads(good):
    assert ck.load_checkpoint(good)["counters"] == {"epoch": 1}
