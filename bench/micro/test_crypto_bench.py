"""Micro benchmarks of the crypto and parsing core, per core (the batch calls are
single-threaded by design; parallelism comes from workers).

Run: .venv/bin/pytest bench/micro --benchmark-enable --benchmark-only -q -s
Each benchmark checks its result before timing and reports entries/s in extra_info.
Targets (issue 3): decrypt_many >= 2M entries/s for 32-byte codes; parse + fingerprint +
encrypt of 1M codes >= 1M codes/s.
"""

import secrets
from collections.abc import Callable
from typing import Any

import pytest

from engine import Cipher, fingerprint, fingerprint_many, parse_codes

SKU = "SKU-0001"
BATCH = 100_000
FILE_LINES = 1_000_000
FP_KEY = secrets.token_bytes(32)


def code32() -> str:
    return secrets.token_hex(16)


@pytest.fixture(scope="module")
def cipher() -> Cipher:
    cipher = Cipher(secrets.token_bytes(32))
    cipher.generate_data_key(1)
    cipher.set_active(1)
    return cipher


@pytest.fixture(scope="module")
def codes() -> list[str]:
    return [code32() for _ in range(BATCH)]


@pytest.fixture(scope="module")
def key_file() -> tuple[bytes, list[str]]:
    codes = [code32() for _ in range(FILE_LINES)]
    return ("\r\n".join(codes) + "\r\n").encode(), codes


def rate(benchmark: Any, entries: int) -> None:
    per_second = entries / benchmark.stats.stats.min
    benchmark.extra_info["entries"] = entries
    benchmark.extra_info["entries_per_s"] = round(per_second)
    print(f"\n{benchmark.name}: {per_second / 1e6:.2f} M entries/s (best round)")


def run(benchmark: Any, fn: Callable[[], object], rounds: int) -> object:
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


def test_decrypt_many(benchmark: Any, cipher: Cipher, codes: list[str]) -> None:
    items = list(enumerate(cipher.encrypt_many(SKU, list(enumerate(codes)))))
    assert cipher.decrypt_many(SKU, items) == codes
    run(benchmark, lambda: cipher.decrypt_many(SKU, items), rounds=20)
    rate(benchmark, BATCH)


def test_encrypt_many(benchmark: Any, cipher: Cipher, codes: list[str]) -> None:
    items = list(enumerate(codes))
    sealed = cipher.encrypt_many(SKU, items)
    assert cipher.decrypt_many(SKU, list(enumerate(sealed))) == codes
    run(benchmark, lambda: cipher.encrypt_many(SKU, items), rounds=20)
    rate(benchmark, BATCH)


def test_fingerprint_many(benchmark: Any, codes: list[str]) -> None:
    digests = fingerprint_many(FP_KEY, codes)
    assert digests[:10] == [fingerprint(FP_KEY, code) for code in codes[:10]]
    assert len(set(digests)) == len(codes)
    run(benchmark, lambda: fingerprint_many(FP_KEY, codes), rounds=20)
    rate(benchmark, BATCH)


def test_parse_txt_1m_lines(benchmark: Any, key_file: tuple[bytes, list[str]]) -> None:
    data, expected = key_file
    assert parse_codes(data, "txt").codes == expected
    run(benchmark, lambda: parse_codes(data, "txt"), rounds=5)
    rate(benchmark, FILE_LINES)


def test_import_pipeline_1m(
    benchmark: Any, cipher: Cipher, key_file: tuple[bytes, list[str]]
) -> None:
    """What an import does per code: parse, fingerprint for duplicates, encrypt for storage
    (entry ids as PostgreSQL would assign them)."""
    data, expected = key_file

    def pipeline() -> tuple[list[bytes], list[bytes]]:
        codes = parse_codes(data, "txt").codes
        fingerprints = fingerprint_many(FP_KEY, codes)
        ciphertexts = cipher.encrypt_many(SKU, list(enumerate(codes, start=1)))
        return fingerprints, ciphertexts

    fingerprints, ciphertexts = pipeline()
    assert len(fingerprints) == len(ciphertexts) == FILE_LINES
    assert cipher.decrypt(SKU, 1, ciphertexts[0]) == expected[0]
    assert fingerprints[-1] == fingerprint(FP_KEY, expected[-1])
    run(benchmark, pipeline, rounds=5)
    rate(benchmark, FILE_LINES)
