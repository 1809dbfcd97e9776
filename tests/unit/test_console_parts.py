"""The console's pure parts: users (Argon2id hashes, the file, CONSOLE_USERS), the trusted-proxy rule, rate limits,
the templates' mask, where a login may lead, and the card/amount match of the search."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest

from worker.console.app import _mask
from worker.console.find import CARD_AMOUNT_DAY, _matches
from worker.console.security import ConsoleConfig, RateLimits
from worker.console.users import Users, UsersError, add_user, hash_password, parse_env_users, password_matches
from worker.console.views import _safe_next


def test_a_password_is_kept_as_an_argon2id_hash_that_only_it_matches() -> None:
    phc = hash_password("correct horse")
    assert phc.startswith("$argon2id$") and "correct horse" not in phc
    assert password_matches("correct horse", phc)
    assert not password_matches("correct horsE", phc)
    assert not password_matches("correct horse", None)  # no such user: refused (after the same work)
    assert not password_matches("correct horse", "$argon2id$garbage")
    with pytest.raises(UsersError):
        hash_password("short")


def test_the_users_file_and_the_environment(tmp_path) -> None:
    path = tmp_path / "users.json"
    add_user(path, "ann", "operator", "ann-password")
    add_user(path, "ben", "viewer", "ben-password")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    env_entry = "ben:operator:" + hash_password("ben-other-pw")
    users = Users({"CONSOLE_USERS_FILE": str(path), "CONSOLE_USERS": env_entry})
    ann = users.authenticate("ann", "ann-password")
    assert ann is not None and ann.role == "operator"
    assert users.authenticate("ann", "wrong-password") is None
    ben = users.authenticate("ben", "ben-other-pw")
    assert ben is not None and ben.role == "operator"  # the environment wins for a name in both
    assert users.authenticate("ben", "ben-password") is None
    assert users.authenticate("nobody", "ann-password") is None
    with pytest.raises(UsersError):
        add_user(path, "cat", "admin", "cat-password")
    with pytest.raises(UsersError):
        add_user(path, "bad name", "viewer", "cat-password")
    with pytest.raises(UsersError):
        parse_env_users("dan:viewer:plaintext")
    path.write_text(json.dumps({"users": []}))
    with pytest.raises(UsersError):
        users.all()


def test_the_default_users_file_is_under_the_data_dir(tmp_path) -> None:
    assert Users({"PAYMENTS_DATA_DIR": str(tmp_path)}).path == tmp_path / "console-users.json"
    assert Users({"PAYMENTS_DATA_DIR": str(tmp_path), "CONSOLE_USERS_FILE": "/x/u.json"}).path.as_posix() == \
        "/x/u.json"


def test_the_proxy_header_is_believed_only_when_set_and_only_from_a_trusted_address() -> None:
    off = ConsoleConfig.from_env({})
    assert not off.proxy_trusted("127.0.0.1")
    on = ConsoleConfig.from_env({"CONSOLE_TRUSTED_HEADER": "X-Remote-User", "CONSOLE_TRUSTED_PROXIES": "10.0.0.0/8"})
    assert on.proxy_trusted("10.1.2.3") and not on.proxy_trusted("127.0.0.1") and not on.proxy_trusted("garbage")
    with pytest.raises(ValueError):
        ConsoleConfig.from_env({"CONSOLE_TRUSTED_PROXIES": "not-an-address"})


def test_rate_limits_count_actions_per_user_and_failed_logins() -> None:
    limits = RateLimits("3/minute", "2/minute")
    assert [limits.allow_action("ann") for _ in range(4)] == [True, True, True, False]
    assert limits.allow_action("ben")
    assert limits.login_allowed("1.2.3.4", "ann")
    limits.login_failed("1.2.3.4", "ann")
    limits.login_failed("5.6.7.8", "ann")
    assert not limits.login_allowed("9.9.9.9", "ANN")  # by name, whatever the address
    assert limits.login_allowed("9.9.9.9", "ben")


def test_whatever_a_page_shows_is_masked_by_the_card_rule() -> None:
    assert _mask("key 4111111111111111 here") == "key xxxxxxxxxxxx1111 here"
    assert _mask(None) == "" and _mask(3) == "3"


@pytest.mark.parametrize("target, expected", [("/payments/a?b=1", "/payments/a?b=1"), ("https://evil.example/", "/"),
                                              ("//evil.example/x", "/"), ("", "/"), ("javascript:x", "/"),
                                              ("/\\evil.example", "/")])
def test_a_login_leads_only_to_a_page_of_this_site(target, expected) -> None:
    from flask import Flask

    app = Flask(__name__)
    app.add_url_rule("/", "index", lambda: "")
    with app.test_request_context():
        assert _safe_next(target) == expected


def test_the_card_amount_day_search() -> None:
    found = CARD_AMOUNT_DAY.match("1111 3.00 2026-12-07")
    assert found is not None and found.groups() == ("1111", "3.00", "2026-12-07")
    assert CARD_AMOUNT_DAY.match("4111111111111111 3.00 2026-12-07") is None
    record = {"masked_account": "xxxxxxxxxxxx1111", "amount": "3.00"}
    assert _matches(record, "1111", Decimal("3")) and not _matches(record, "1112", Decimal("3.00"))
    assert not _matches(record, "1111", Decimal("3.01")) and not _matches({"amount": "x"}, "1111", Decimal(1))


def test_the_attempt_journal_in_words() -> None:
    from worker.console.story import journal, when

    never = dict(journal({"attempts": 1, "sends": 0}))
    assert never == {"attempts": "1", "money-moving sends noted": "0"}
    sent = dict(journal({"attempts": 2, "sends": 2, "attempt_ts": 1_800_000_000.5, "sent_ts": 1_800_000_001,
                         "in_flight": "1", "lease_owner": "w1", "lease_until": 1_800_000_031}))
    assert sent["may have been sent (left by)"] == when(1_800_000_001) == "2027-01-15T08:00:01.000Z"
    assert "may have been sent" in sent["in flight"] and sent["lease held by"].startswith("w1 until 2027-01-15T")
    noted = dict(journal({"attempts": 1, "sends": 1}))
    assert noted["may have been sent"].startswith("no")
    assert when(None) == when("x") == when(0) == ""
