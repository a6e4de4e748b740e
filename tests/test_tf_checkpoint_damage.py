"""A TF-Slim checkpoint with a flipped byte is an error, as in TensorFlow, never wrong weights.

TensorFlow stores the masked CRC-32C of every tensor's bytes in its index entry and of every
index block in the block's trailer, and refuses a file whose bytes do not match ("Checksum does
not match"). The fixture was written by TensorFlow itself (tests/fixtures/interop), so its
intact files loading is the check that the checksums are computed as TensorFlow computes them.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from test_interop import fixture

from npmobilenet.interop import load_tf_checkpoint

DATA, INDEX = "model.ckpt.data-00000-of-00001", "model.ckpt.index"


def test_crc32c_check_value():
    """CRC-32C("123456789") is 0xE3069283 (RFC 3720, B.4); TensorFlow stores it masked."""
    from npmobilenet.interop.tf_checkpoint import masked_crc32c

    c = 0xE3069283
    assert masked_crc32c(b"123456789") == ((c >> 15 | c << 17) + 0xA282EAD8) & 0xFFFFFFFF
    assert masked_crc32c(b"xx123456789y", 2, 9) == masked_crc32c(b"123456789")


@pytest.fixture()
def copy(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(fixture("slim_mobilenet_v1"), folder)
    return folder


def _flip(path, pos):
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x10
    path.write_bytes(bytes(data))


def test_flipped_byte_in_the_data_file_is_refused(copy):
    size = os.path.getsize(copy / DATA)
    for pos in [0, 1000, size // 3, size // 2, size - 1]:
        _flip(copy / DATA, pos)
        with pytest.raises(ValueError, match=r"data-00000-of-00001: the bytes of \S+ do not"
                           r" match their checksum"):  # fmt: skip
            load_tf_checkpoint(copy / "model.ckpt")
        _flip(copy / DATA, pos)  # back to intact
    model = load_tf_checkpoint(copy / "model.ckpt")
    x = np.load(fixture("input.npy"))
    assert np.abs(model(x) - np.load(fixture("slim_mobilenet_v1.logits.npy"))).max() < 1e-3


def test_flipped_byte_in_an_index_block_is_refused(copy):
    """Every byte of the data and index blocks (the table's footer and its unused metaindex
    block aside) is covered: a flipped offset, size, shape or name is an error."""
    index = copy / INDEX
    for pos in range(0, os.path.getsize(index) - 100, 211):
        _flip(index, pos)
        with pytest.raises(ValueError, match=r"model\.ckpt"):
            load_tf_checkpoint(copy / "model.ckpt")
        _flip(index, pos)
