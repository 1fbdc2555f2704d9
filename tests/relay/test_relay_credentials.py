# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
import pytest

from relay import credentials
from relay.credentials import Verifier, hash_secret, new_secret

from .relay_support import COST


@pytest.fixture
def checks(monkeypatch):
    """Counts the bcrypt checks the verifier runs."""
    calls = []
    real = credentials._checkpw

    def counting(secret, hashed):
        calls.append(hashed)
        return real(secret, hashed)

    monkeypatch.setattr(credentials, "_checkpw", counting)
    return calls


def test_cost_is_checked():
    with pytest.raises(ValueError, match="between 4 and 31"):
        hash_secret("x", 3)
    assert hash_secret("x", COST).startswith(b"$2b$04$")


async def test_verify_known_and_wrong_secret(checks):
    secret = new_secret()
    stored = hash_secret(secret, COST)
    verifier = Verifier(cost=COST)
    assert await verifier.verify("id", stored, secret.encode())
    assert not await verifier.verify("id", stored, b"wrong")
    assert not await verifier.verify("id", stored, secret.encode()[:-1])
    assert len(checks) == 3


async def test_unknown_bridge_costs_a_bcrypt_check_too(checks):
    verifier = Verifier(cost=COST)
    assert not await verifier.verify("unknown", None, b"anything")
    assert not await verifier.verify("unknown", None, b"anything")
    assert len(checks) == 2
    assert checks[0].startswith(b"$2b$04$")  # a dummy hash of the configured cost


async def test_overlong_secret_is_refused_after_the_same_work(checks):
    stored = hash_secret("s", COST)
    assert not await Verifier(cost=COST).verify("id", stored, b"s" * 128)
    assert len(checks) == 1


async def test_verified_credentials_are_readmitted_without_bcrypt(checks):
    secret = new_secret()
    stored = hash_secret(secret, COST)
    verifier = Verifier(cost=COST)
    for _ in range(5):
        assert await verifier.verify("id", stored, secret.encode())
    assert len(checks) == 1
    # Wrong secrets and a rotated hash never hit the cache.
    assert not await verifier.verify("id", stored, b"wrong")
    rotated_secret = new_secret()
    rotated = hash_secret(rotated_secret, COST)
    assert not await verifier.verify("id", rotated, secret.encode())
    assert await verifier.verify("id", rotated, rotated_secret.encode())
    assert len(checks) == 4
    assert secret not in repr(verifier)


async def test_cache_is_bounded(checks):
    verifier = Verifier(cost=COST, cache_size=2)
    secret = new_secret()
    stored = hash_secret(secret, COST)
    for bridge_id in ["a", "b", "c"]:
        assert await verifier.verify(bridge_id, stored, secret.encode())
    assert await verifier.verify("a", stored, secret.encode())  # evicted: checked again
    assert len(checks) == 4
