"""certpager.auth.Credentials: what an Authorization header must carry, for both services."""

from __future__ import annotations

import base64

from certpager.auth import Credentials


def test_each_line_of_the_bearer_secret_is_a_token_in_force() -> None:
    """A rotation overlaps: the bridge's file holds the old and the new token while Alertmanager switches."""
    overlap = Credentials(bearer_token="old-token\nnew-token\n")
    assert overlap.accepts("Bearer old-token")
    assert overlap.accepts("Bearer new-token")
    assert not overlap.accepts("Bearer old-token\nnew-token")
    assert not overlap.accepts("Bearer other")
    assert not overlap.accepts("Bearer ")  # an empty line is no token
    after = Credentials(bearer_token="new-token")
    assert after.accepts("Bearer new-token") and not after.accepts("Bearer old-token")


def test_basic_and_bearer_either_and_open_when_neither() -> None:
    both = Credentials(bearer_token="t", basic_username="am", basic_password="pw")
    assert both.accepts("Basic " + base64.b64encode(b"am:pw").decode())
    assert both.accepts("Bearer t")
    assert not both.accepts("Basic " + base64.b64encode(b"am:nope").decode())
    assert not both.accepts("Basic é")
    assert Credentials().accepts("")
