"""The signature check of engine.signing, with the clock injected."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import pytest

from api.problems import STATUS_BY_CODE
from engine._core import Cipher, CryptoError
from engine.errors import DomainError
from engine.principals import AgentKey
from engine.signing import (
    WINDOW_S,
    SigningError,
    new_signing_secret,
    seal,
    sign,
    string_to_sign,
    unseal,
    verify,
)

SECRET = "kami_sig_" + "s" * 43
NOW = 1_767_225_600
BODY = b'{"sku": "VIP-MONTH", "quantity": 1}'


def _verify(signature: str | None, timestamp: str | None = str(NOW), *, now: float = NOW) -> str:
    return verify(
        SECRET.encode(),
        method="POST",
        target="/v1/issuances",
        timestamp=timestamp,
        signature=signature,
        body=BODY,
        now=now,
    )


def _code(exc: pytest.ExceptionInfo[DomainError]) -> str:
    return str(exc.value.code)


def test_the_string_to_sign_is_the_documented_one() -> None:
    body_hash = hashlib.sha256(BODY).hexdigest()
    assert string_to_sign("post", "/v1/x?a=1", "17", BODY) == (
        f"POST\n/v1/x?a=1\n17\n{body_hash}".encode()
    )
    assert string_to_sign("GET", "/v1/x", "17", b"").endswith(
        b"\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    expected = hmac.new(
        SECRET.encode(), string_to_sign("POST", "/v1/x", "17", BODY), hashlib.sha256
    ).hexdigest()
    assert sign(SECRET, "POST", "/v1/x", "17", BODY) == expected


@pytest.mark.parametrize("skew", [-WINDOW_S, 0, WINDOW_S])
def test_the_window_is_300_seconds_either_way(skew: int) -> None:
    ts = str(NOW + skew)
    signature = sign(SECRET, "POST", "/v1/issuances", ts, BODY)
    assert _verify(signature, ts) == signature


@pytest.mark.parametrize("skew", [-WINDOW_S - 1, WINDOW_S + 1, -86_400])
def test_outside_the_window_is_expired(skew: int) -> None:
    ts = str(NOW + skew)
    with pytest.raises(DomainError) as exc:
        _verify(sign(SECRET, "POST", "/v1/issuances", ts, BODY), ts)
    assert _code(exc) == SigningError.SIGNATURE_EXPIRED


def test_an_upper_case_signature_verifies_to_the_canonical_form() -> None:
    signature = sign(SECRET, "POST", "/v1/issuances", str(NOW), BODY)
    assert _verify(signature.upper()) == signature


@pytest.mark.parametrize(
    ("signature", "timestamp"),
    [
        (None, str(NOW)),
        ("ab" * 32, None),
        ("ab" * 31, str(NOW)),
        ("gg" * 32, str(NOW)),
        ("ab" * 32, "-5"),
        ("ab" * 32, "1e9"),
        ("ab" * 32, str(NOW)),
    ],
)
def test_missing_malformed_or_wrong_is_invalid(
    signature: str | None, timestamp: str | None
) -> None:
    with pytest.raises(DomainError) as exc:
        _verify(signature, timestamp)
    assert _code(exc) == SigningError.INVALID_SIGNATURE


def test_a_key_whose_secret_did_not_open_fails_closed() -> None:
    signature = sign(SECRET, "POST", "/v1/issuances", str(NOW), BODY)
    with pytest.raises(DomainError) as exc:
        verify(
            None,
            method="POST",
            target="/v1/issuances",
            timestamp=str(NOW),
            signature=signature,
            body=BODY,
            now=NOW,
        )
    assert _code(exc) == SigningError.INVALID_SIGNATURE


def test_sealed_secrets_are_bound_to_their_key() -> None:
    cipher = Cipher(secrets.token_bytes(32))
    cipher.generate_data_key(1)
    cipher.set_active(1)
    secret = new_signing_secret()
    sealed = seal(cipher, 7, secret)
    assert secret.encode() not in sealed
    assert unseal(cipher, 7, sealed) == secret.encode()
    with pytest.raises(CryptoError):
        unseal(cipher, 8, sealed)


def test_every_code_has_a_status_and_the_secret_stays_out_of_reprs() -> None:
    assert {STATUS_BY_CODE[c] for c in SigningError if c != "api_key_not_found"} == {401}
    assert STATUS_BY_CODE[SigningError.API_KEY_NOT_FOUND] == 404
    key = AgentKey(1, 2, 3, "live", require_signature=True, signing_secret=SECRET.encode())
    assert SECRET not in repr(key)
