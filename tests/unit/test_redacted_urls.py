"""Database URLs as operators' commands and logs show them: every password replaced, wherever a
URL can carry one; and a driver's message about a URL with a password not shown at all."""

from __future__ import annotations

import pytest

from keel.config import redacted_text, redacted_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://keel:s3cret@db:5432/keel", "postgresql://keel:***@db:5432/keel"),
        ("postgresql://keel:p@w0rd@db/keel", "postgresql://keel:***@db/keel"),  # an unencoded @
        ("postgresql://keel@db/keel?password=s3cret", "postgresql://keel@db/keel?password=***"),
        (
            "postgresql:///keel?host=/run/pg&PASSWORD=s3cret&sslpassword=k3y&sslmode=require",
            "postgresql:///keel?host=/run/pg&PASSWORD=***&sslpassword=***&sslmode=require",
        ),
        ("postgresql://keel@db/keel", "postgresql://keel@db/keel"),
        ("sqlite:////var/lib/keel/keel.sqlite3", "sqlite:////var/lib/keel/keel.sqlite3"),
    ],
)
def test_every_password_in_a_url_is_hidden(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


def test_a_drivers_message_about_a_url_with_a_password_is_withheld() -> None:
    # asyncpg, given a password with an unencoded `@`, quotes the part after it as a port.
    message = "invalid literal for int() with base 10: 'w0rd@db'"
    assert "w0rd" not in redacted_text(message, "postgresql://keel:p@w0rd@db/keel")
    assert redacted_text(message, "sqlite:////tmp/keel.sqlite3") == message
