"""engine._core crypto: envelope encryption, fingerprints, normalisation."""

import hashlib
import hmac
import pickle
import threading
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import (
    Cipher,
    CryptoError,
    EngineError,
    constant_time_eq,
    fingerprint,
    fingerprint_many,
    normalize_code,
)

MASTER = bytes(range(32))
FP_KEY = b"f" * 32


def make_cipher(*key_ids: int) -> tuple[Cipher, dict[int, bytes]]:
    cipher = Cipher(MASTER)
    wrapped = {key_id: cipher.generate_data_key(key_id) for key_id in key_ids}
    cipher.set_active(key_ids[-1])
    return cipher, wrapped


@pytest.fixture(scope="module")
def cipher() -> Cipher:
    return make_cipher(1)[0]


@given(sku=st.text(max_size=40), entry_id=st.integers(-(2**63), 2**63 - 1), code=st.text())
def test_round_trip_of_any_text(cipher: Cipher, sku: str, entry_id: int, code: str) -> None:
    ciphertext = cipher.encrypt(sku, entry_id, code)
    assert len(ciphertext) == len(code.encode()) + 33
    assert cipher.decrypt(sku, entry_id, ciphertext) == code
    assert cipher.decrypt_many(sku, [(entry_id, ciphertext)]) == [code]


@given(st.lists(st.text(max_size=64), max_size=50))
def test_batches_round_trip_in_order(cipher: Cipher, codes: list[str]) -> None:
    items = list(enumerate(codes))
    sealed = cipher.encrypt_many("SKU", items)
    assert len(sealed) == len(codes)
    assert cipher.decrypt_many("SKU", list(zip(range(len(codes)), sealed, strict=True))) == codes


def test_ciphertext_header_names_the_key(cipher: Cipher) -> None:
    ciphertext = cipher.encrypt("SKU", 1, "ABCD")
    assert ciphertext[0] == 1
    assert int.from_bytes(ciphertext[1:5], "big") == 1
    assert Cipher.key_id_of(ciphertext) == 1
    with pytest.raises(CryptoError):
        Cipher.key_id_of(b"\x02" + ciphertext[1:])
    with pytest.raises(CryptoError):
        Cipher.key_id_of(ciphertext[:20])


def test_same_code_gives_different_ciphertext(cipher: Cipher) -> None:
    assert cipher.encrypt("SKU", 1, "same") != cipher.encrypt("SKU", 1, "same")


def test_every_tampered_byte_is_detected(cipher: Cipher) -> None:
    ciphertext = cipher.encrypt("SKU", 9, "SECRET-CODE")
    for i in range(len(ciphertext)):
        tampered = bytearray(ciphertext)
        tampered[i] ^= 0x80
        with pytest.raises(CryptoError):
            cipher.decrypt("SKU", 9, bytes(tampered))
    with pytest.raises(CryptoError):
        cipher.decrypt("SKU", 9, ciphertext[:-1])


def test_ciphertext_moved_to_another_row_or_sku_fails(cipher: Cipher) -> None:
    ciphertext = cipher.encrypt("SKU-A", 100, "SECRET")
    for sku, entry_id in [("SKU-B", 100), ("SKU-A", 101), ("sku-a", 100), ("SKU-A ", 100)]:
        with pytest.raises(CryptoError):
            cipher.decrypt(sku, entry_id, ciphertext)


def test_errors_and_repr_reveal_no_secret(cipher: Cipher) -> None:
    ciphertext = cipher.encrypt("SKU", 5, "TOP-SECRET-KEY")
    other = cipher.encrypt("SKU", 6, "OTHER-SECRET")
    with pytest.raises(CryptoError) as caught:
        cipher.decrypt_many("SKU", [(5, ciphertext), (7, other)])
    message = str(caught.value)
    assert "entry 7" in message
    assert "SECRET" not in message
    assert repr(cipher) == "Cipher(active_key_id=1, key_ids=[1])"
    assert MASTER.hex() not in repr(cipher)
    with pytest.raises(TypeError):
        pickle.dumps(cipher)
    assert issubclass(CryptoError, EngineError)


def test_rotation_keeps_old_ciphertext_readable() -> None:
    cipher, wrapped = make_cipher(1)
    old = cipher.encrypt("SKU", 1, "old")
    wrapped[2] = cipher.generate_data_key(2)
    assert cipher.active_key_id == 1, "a generated key waits to be activated"
    cipher.set_active(2)
    new = cipher.encrypt("SKU", 2, "new")
    assert (Cipher.key_id_of(old), Cipher.key_id_of(new)) == (1, 2)
    assert cipher.decrypt_many("SKU", [(1, old), (2, new)]) == ["old", "new"]

    # A restarted process loads the wrapped keys from the database.
    restarted = Cipher(MASTER)
    assert restarted.active_key_id is None
    restarted.add_data_key(1, wrapped[1])
    restarted.add_data_key(2, wrapped[2], active=True)
    restarted.add_data_key(2, wrapped[2])
    assert restarted.key_ids == [1, 2]
    assert restarted.active_key_id == 2
    assert restarted.decrypt_many("SKU", [(1, old), (2, new)]) == ["old", "new"]


def test_wrapped_keys_need_the_right_master_and_id() -> None:
    _, wrapped = make_cipher(1)
    with pytest.raises(CryptoError):
        Cipher(b"\x00" * 32).add_data_key(1, wrapped[1])
    with pytest.raises(CryptoError):
        Cipher(MASTER).add_data_key(2, wrapped[1])
    with pytest.raises(CryptoError):
        Cipher(MASTER).add_data_key(1, wrapped[1][:-1])
    _, foreign = make_cipher(1)
    cipher = Cipher(MASTER)
    cipher.add_data_key(1, wrapped[1])
    with pytest.raises(ValueError, match="different key"):
        cipher.add_data_key(1, foreign[1])


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Cipher(b"short")
    cipher = Cipher(MASTER)
    with pytest.raises(CryptoError, match="no active data key"):
        cipher.encrypt("SKU", 1, "x")
    with pytest.raises(ValueError, match="not loaded"):
        cipher.set_active(3)
    cipher.generate_data_key(3)
    with pytest.raises(ValueError, match="already exists"):
        cipher.generate_data_key(3)
    with pytest.raises(OverflowError):
        cipher.generate_data_key(-1)
    with pytest.raises(TypeError):
        cipher.encrypt_many("SKU", "not pairs")  # type: ignore[arg-type]


def test_batches_run_concurrently_with_rotation() -> None:
    cipher, _ = make_cipher(1)
    codes = [f"CODE-{i:027d}" for i in range(2_000)]
    sealed = cipher.encrypt_many("SKU", list(enumerate(codes)))
    items = list(enumerate(sealed))
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                assert cipher.decrypt_many("SKU", items) == codes
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for key_id in range(2, 12):
        cipher.generate_data_key(key_id)
        cipher.set_active(key_id)
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
    assert cipher.active_key_id == 11


def test_normalize_code_trims_and_composes_only() -> None:
    assert normalize_code("\u3000 Ab-1\t\r\n") == "Ab-1"
    assert normalize_code("e\u0301") == "\u00e9"
    assert normalize_code("a b") == "a b"
    assert normalize_code("ABC") != normalize_code("abc")
    assert normalize_code("\uff11") == "\uff11"


# The Unicode White_Space property, which `str.strip()` does not follow exactly (it also
# strips U+001C..U+001F).
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
WHITE_SPACE += "\u2028\u2029\u202f\u205f\u3000"


@given(st.text())
def test_normalize_code_matches_python(code: str) -> None:
    assert normalize_code(code) == unicodedata.normalize("NFC", code.strip(WHITE_SPACE))
    assert normalize_code("\x1f") == "\x1f"


@given(st.text())
def test_fingerprint_is_hmac_sha256_of_the_normal_form(code: str) -> None:
    expected = hmac.new(FP_KEY, normalize_code(code).encode(), hashlib.sha256).digest()
    assert fingerprint(FP_KEY, code) == expected


def test_fingerprints() -> None:
    assert fingerprint(FP_KEY, " e\u0301X ") == fingerprint(FP_KEY, "\u00e9X")
    assert fingerprint(FP_KEY, "abc") != fingerprint(FP_KEY, "ABC")
    assert fingerprint(FP_KEY, "abc") != fingerprint(b"g" * 32, "abc")
    codes = ["A", " A", "B", ""]
    assert fingerprint_many(FP_KEY, codes) == [fingerprint(FP_KEY, c) for c in codes]
    assert fingerprint_many(FP_KEY, []) == []
    with pytest.raises(ValueError, match="at least 32 bytes"):
        fingerprint(b"k" * 31, "abc")
    with pytest.raises(TypeError):
        fingerprint_many(FP_KEY, "abc")


def test_constant_time_eq() -> None:
    assert constant_time_eq(b"sig", b"sig")
    assert not constant_time_eq(b"sig", b"sih")
    assert not constant_time_eq(b"sig", b"sig2")
    assert constant_time_eq(b"", b"")
