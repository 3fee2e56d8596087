from __future__ import annotations

import itertools
import os
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg import IntegrityError, ParameterError
from secagg.hazmat import shamir
from secagg.hazmat.keys import AgreementKeyPair, SigningKey, derive_key, open_sealed, seal, verify_signature
from secagg.hazmat.prg import MaskStream, expand


@given(st.integers(1, 6), st.integers(0, 3), st.integers(1, 4), st.data())
def test_any_t_shares_reconstruct_and_t_minus_1_do_not(t, extra, secrets, data) -> None:
    n = t + extra
    xs = data.draw(st.lists(st.integers(1, shamir.MAX_X), min_size=n, max_size=n, unique=True))
    values = [os.urandom(32) for _ in range(secrets)]
    shares = shamir.split(values, t, xs)
    subset = data.draw(st.lists(st.integers(0, n - 1), min_size=t, max_size=t, unique=True))
    assert shamir.reconstruct([xs[i] for i in subset], shares[subset]) == values
    if t > 1:
        fewer = subset[:-1]
        with pytest.raises(IntegrityError):
            shamir.reconstruct([xs[i] for i in fewer], shares[fewer])


def test_shamir_every_subset_n6_t3() -> None:
    xs = [3, 7, 11, 19, 23, 42]
    secret = [os.urandom(32)]
    shares = shamir.split(secret, 3, xs)
    for subset in itertools.combinations(range(6), 3):
        assert shamir.reconstruct([xs[i] for i in subset], shares[list(subset)]) == secret


def test_shamir_detects_a_wrong_share_and_rejects_bad_parameters() -> None:
    xs = [1, 2, 3]
    shares = shamir.split([os.urandom(32)], 3, xs)
    shares[1, 0, :] = np.frombuffer(os.urandom(64), dtype="<u4") & 0x3FFFFFFF  # a random wrong share
    with pytest.raises(IntegrityError):
        shamir.reconstruct(xs, shares)
    with pytest.raises(ParameterError):
        shamir.split([os.urandom(32)], 4, xs)
    with pytest.raises(ParameterError):
        shamir.split([os.urandom(32)], 2, [1, 1, 2])
    with pytest.raises(ParameterError):
        shamir.split([os.urandom(31)], 2, xs)


def test_pairwise_keys_agree_and_are_label_separated() -> None:
    a, b = AgreementKeyPair.generate(), AgreementKeyPair.generate()
    assert a.agree(b.public_bytes, b"pairwise-mask", b"s") == b.agree(a.public_bytes, b"pairwise-mask", b"s")
    assert a.agree(b.public_bytes, b"pairwise-mask", b"s") != a.agree(b.public_bytes, b"self-mask", b"s")
    assert a.agree(b.public_bytes, b"pairwise-mask", b"s") != a.agree(b.public_bytes, b"pairwise-mask", b"t")
    with pytest.raises(IntegrityError):
        a.agree(bytes(32), b"pairwise-mask", b"")
    with pytest.raises(ParameterError):
        derive_key(os.urandom(32), b"bad\x00label")


def test_aead_binds_associated_data() -> None:
    key = os.urandom(32)
    sealed = seal(key, b"share", b"session|1|2")
    assert open_sealed(key, sealed, b"session|1|2") == b"share"
    for ad in (b"session|2|1", b""):
        with pytest.raises(IntegrityError):
            open_sealed(key, sealed, ad)
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(IntegrityError):
        open_sealed(key, bytes(tampered), b"session|1|2")


def test_signatures_verify_or_raise() -> None:
    key = SigningKey.generate()
    sig = key.sign(b"advertise-keys", b"msg")
    verify_signature(key.public_bytes, sig, b"advertise-keys", b"msg")
    with pytest.raises(IntegrityError):
        verify_signature(key.public_bytes, sig, b"survivor-set", b"msg")


def test_secret_holders_refuse_pickling_and_hide_secrets() -> None:
    pair = AgreementKeyPair.generate()
    for obj in (pair, SigningKey.generate(), MaskStream(os.urandom(32))):
        with pytest.raises(TypeError):
            pickle.dumps(obj)
    assert pair.private_bytes().hex() not in repr(pair)


def test_masks_look_uniform() -> None:
    key = bytes.fromhex("5ec0a99e" * 8)  # recorded key: the statistic replays exactly
    words = expand(key, 1 << 16, np.uint32)
    counts = np.bincount((words >> 24).astype(np.int64), minlength=256)
    chi2 = ((counts - counts.mean()) ** 2 / counts.mean()).sum()
    assert chi2 < 400  # 255 degrees of freedom: p < 1e-7 for a uniform source
