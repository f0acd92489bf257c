"""HTTP authentication both services check: a bearer token, basic auth, or both; open when neither is set.

:class:`Credentials` holds what the config resolved (the secrets read from their files) and answers
whether an ``Authorization`` header carries them, comparing in constant time, and which
``WWW-Authenticate`` challenges a 401 sends. The bridge checks its webhook and ``POST /-/reload``
with it (``server.auth``), the exporter ``/probe`` and ``POST /-/reload`` (``web.auth``).
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, field_validator

from certpager.config import StrictModel, read_secret_file


@dataclass(frozen=True)
class Credentials:
    """Accepted credentials; ``repr`` never shows the secrets.

    ``bearer_token`` may hold several tokens, one per line: each is accepted (a rotation's overlap).
    """

    bearer_token: str | None = field(default=None, repr=False)
    basic_username: str | None = None
    basic_password: str | None = field(default=None, repr=False)

    @property
    def required(self) -> bool:
        """Whether any credentials are configured (if not, every request is accepted)."""
        return self.bearer_token is not None or self.basic_password is not None

    def accepts(self, header: str) -> bool:
        """Whether an Authorization header matches the bearer token or basic auth (constant time)."""
        if not self.required:
            return True
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and self.bearer_token is not None:
            # Every line of the secret is a token in force, so a rotation can overlap (old and new at once).
            # Every token is compared, none skipped, so the time taken says nothing about which matched.
            sent = value.strip().encode()
            matches = [hmac.compare_digest(sent, token.strip().encode())
                       for token in self.bearer_token.splitlines() if token.strip()]
            return any(matches)
        if scheme.lower() == "basic" and self.basic_password is not None and self.basic_username is not None:
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except ValueError:  # not base64 (binascii.Error), not ASCII ("Basic é"), not UTF-8 inside
                return False
            user_ok = hmac.compare_digest(user.encode(), self.basic_username.encode())
            return hmac.compare_digest(password.encode(), self.basic_password.encode()) and user_ok
        return False

    def challenges(self) -> tuple[tuple[str, str], ...]:
        """One ``WWW-Authenticate`` header per configured scheme."""
        headers: list[tuple[str, str]] = []
        if self.bearer_token is not None:
            headers.append(("WWW-Authenticate", 'Bearer realm="certpager"'))
        if self.basic_password is not None:
            headers.append(("WWW-Authenticate", 'Basic realm="certpager"'))
        return tuple(headers)


class BasicAuthFile(StrictModel):
    """Basic auth: a user name and the file holding its password."""

    username: str = Field(min_length=1)
    password_file: Path  # relative to the config file's directory, as the bridge's

    @field_validator("username")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        if ":" in value or not value.isprintable():
            raise ValueError("a basic auth user name has no ':' and no control characters")
        return value


class FileAuth(StrictModel):
    """Credentials read from files: a bearer token, basic auth, or both (either is accepted); neither: open."""

    bearer_token_file: Path | None = None
    basic_auth: BasicAuthFile | None = None

    def credentials(self, *, key: str, config_path: Path) -> Credentials:
        """Read the secret files now (at load and every reload); ConfigError names ``key`` and the file."""
        base = config_path.parent
        token = None if self.bearer_token_file is None else read_secret_file(
            base / self.bearer_token_file, key=f"{key}.bearer_token_file", config_path=config_path)
        basic = self.basic_auth
        password = None if basic is None else read_secret_file(
            base / basic.password_file, key=f"{key}.basic_auth.password_file", config_path=config_path)
        return Credentials(bearer_token=token, basic_username=None if basic is None else basic.username,
                           basic_password=password)
