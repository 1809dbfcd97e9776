import json
import logging

import pytest
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st

from worker.cards.vault import (
    DEVELOPMENT_KEY,
    CardDecryptError,
    CardVault,
    ConfigError,
    load_card_key,
    mask_card,
    mask_number,
)

CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}


def test_round_trip():
    vault = CardVault([Fernet.generate_key()])
    encrypted = vault.encrypt(CARD)
    assert set(encrypted) == {"sealed", "masked"}
    assert encrypted["masked"] == "xxxxxxxxxxxx1111"
    assert vault.decrypt(encrypted) == CARD
    json.loads(json.dumps(encrypted))  # JSON-safe
    assert CardVault.is_encrypted(encrypted) and not CardVault.is_encrypted(CARD)


def test_round_trip_without_cvv2():
    vault = CardVault([Fernet.generate_key()])
    card = {"number": "4111111111111111", "expire": "1230"}
    assert vault.decrypt(vault.encrypt(card)) == card


def test_seal_is_idempotent():
    vault = CardVault([Fernet.generate_key()])
    encrypted = vault.encrypt(CARD)
    assert vault.encrypt(encrypted) is encrypted


def test_sealed_form_has_no_clear_data():
    vault = CardVault([Fernet.generate_key()])
    text = json.dumps(vault.encrypt(CARD))
    assert "4111111111111111" not in text
    assert "411111" not in text
    assert '"123"' not in text and "cvv2" not in text


def test_key_rotation():
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    old_vault = load_card_key(old, "LIVE")
    sealed_old = old_vault.encrypt(CARD)
    rotated = load_card_key(f"{new}, {old}", "LIVE")
    assert rotated.decrypt(sealed_old) == CARD  # old key still opens
    sealed_new = rotated.encrypt(CARD)
    assert load_card_key(new, "LIVE").decrypt(sealed_new) == CARD  # new key encrypts
    with pytest.raises(CardDecryptError):
        old_vault.decrypt(sealed_new)
    assert load_card_key(new, "LIVE").decrypt(rotated.rotate(sealed_old)) == CARD


def test_wrong_key_or_tampered_token():
    vault = CardVault([Fernet.generate_key()])
    encrypted = vault.encrypt(CARD)
    other = CardVault([Fernet.generate_key()])
    with pytest.raises(CardDecryptError) as exc:
        other.decrypt(encrypted)
    assert encrypted["sealed"] not in str(exc.value) and "4111" not in str(exc.value)
    bad = dict(encrypted, sealed=encrypted["sealed"][:-4] + "AAAA")
    with pytest.raises(CardDecryptError):
        vault.decrypt(bad)
    with pytest.raises(CardDecryptError):
        vault.decrypt({"sealed": "not-a-token"})
    with pytest.raises(CardDecryptError):
        vault.decrypt(CARD)


def test_test_mode_without_key_uses_dev_key_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="worker.cards.vault"):
        vault = load_card_key(None, "TEST")
    assert any(r.levelno == logging.WARNING and "PAYMENTS_CARD_KEY" in r.getMessage() for r in caplog.records)
    assert CardVault([DEVELOPMENT_KEY]).decrypt(vault.encrypt(CARD)) == CARD
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="worker.cards.vault"):
        load_card_key("  ", "test")
    assert caplog.records


@pytest.mark.parametrize("value", [None, "", " , "])
def test_live_mode_without_key_fails(value):
    with pytest.raises(ConfigError):
        load_card_key(value, "LIVE")


def test_live_mode_refuses_dev_key():
    with pytest.raises(ConfigError):
        load_card_key(DEVELOPMENT_KEY, "LIVE")


def test_unknown_mode():
    with pytest.raises(ConfigError):
        load_card_key(Fernet.generate_key().decode(), "PROD")


@pytest.mark.parametrize("bad", ["not-a-key-at-all", "c2hvcnQ=", "A" * 44, "Zm9vYmFy" * 7 + "?!!!"])
def test_bad_key_message_has_no_key_material(bad):
    good = Fernet.generate_key().decode()
    with pytest.raises(ConfigError) as exc:
        load_card_key(f"{good},{bad}", "TEST")
    msg = str(exc.value)
    assert bad not in msg and good not in msg
    assert bad[:6] not in msg
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_repr_has_no_key():
    key = Fernet.generate_key().decode()
    assert key not in repr(load_card_key(key, "LIVE"))


def test_mask_number():
    assert mask_number("4111111111111111") == "xxxxxxxxxxxx1111"
    assert mask_number("4111 1111 1111 1234") == "xxxxxxxxxxxx1234"
    assert mask_number("378282246310005") == "xxxxxxxxxxxx0005"
    assert mask_number("6011-0009-9013-9424-123") == "xxxxxxxxxxxx4123"
    assert mask_number(None) == "xxxxxxxxxxxx"


@given(st.text(alphabet="0123456789 -", min_size=0, max_size=30))
def test_mask_number_keeps_only_last_four(number):
    masked = mask_number(number)
    digits = "".join(c for c in number if c.isdigit())
    assert masked == "xxxxxxxxxxxx" + digits[-4:]


def test_mask_card():
    assert mask_card(CARD) == {"number": "xxxxxxxxxxxx1111", "expire": "1230", "cvv2": "***"}
    assert mask_card({"number": "4111111111111111", "expire": "1230"}) == {
        "number": "xxxxxxxxxxxx1111", "expire": "1230"}
    vault = CardVault([Fernet.generate_key()])
    assert mask_card(vault.encrypt(CARD)) == {"number": "xxxxxxxxxxxx1111", "expire": "**"}
    assert mask_card("4111111111111111") == {"number": "xxxxxxxxxxxx"}
    # a forged "masked" value cannot smuggle a number into the masked view
    assert mask_card({"sealed": "x", "masked": "4111111111111111"}) == {
        "number": "xxxxxxxxxxxx1111", "expire": "**"}
