"""The shared YAML loader: durations, $VAR expansion, duplicate keys, error messages without secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from certpager.config import Duration as DurationT
from certpager.config import StrictModel, format_duration, load_config, parse_duration, read_secret_file
from certpager.errors import ConfigError


class Inner(StrictModel):
    token: SecretStr
    every: DurationT = 60.0


class Outer(StrictModel):
    name: str
    inner: Inner
    items: list[int] = []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("7d", 604800.0), ("500ms", 0.5),
     ("2w", 1209600.0), ("1y", 31536000.0), (15, 15.0), (2.5, 2.5), ("5", 5.0), ("2.5", 2.5),
     ("100y", 100 * 31536000.0)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", [
    "", "5x", "m5", "1h 30m", "-5s", "-5", -1, True, None, "30s5", float("inf"), float("-inf"), float("nan"),
    "101y", "9" * 300 + "s", "9" * 400, 10**400, 10**300, 1e300,
])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration_round_trips() -> None:
    for seconds in (0.0, 30.0, 300.0, 7200.0, 86400.0 * 30, 1.5):
        assert parse_duration(format_duration(seconds)) == seconds


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf.yml"
    path.write_text(text)
    return path


def test_env_expansion_and_escape(tmp_path: Path) -> None:
    path = write(tmp_path, "name: ${WHO}-$$x\ninner: {token: $TOKEN, every: 2m}\n")
    cfg = load_config(Outer, path, env={"WHO": "ops", "TOKEN": "s3cret"})
    assert cfg.name == "ops-$x"
    assert cfg.inner.token.get_secret_value() == "s3cret"
    assert cfg.inner.every == 120.0


def test_unset_env_var_names_key_and_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\ninner: {token: $MISSING}\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path, env={})
    assert str(err.value) == f"{path}: inner.token: environment variable $MISSING is not set"


def test_errors_name_file_key_and_expectation_without_values(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\ninner: {token: hunter2, every: soon}\nitems: [1, x]\nextra: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    text = str(err.value)
    assert f"{path}: inner.every: expected a duration like 30s, 5m, 7d" in text
    assert f"{path}: items[1]: " in text
    assert f"{path}: extra: unknown key" in text
    assert "hunter2" not in text


def test_missing_key(tmp_path: Path) -> None:
    path = write(tmp_path, "inner: {token: t}\n")
    with pytest.raises(ConfigError, match=r"conf.yml: name: required key is missing"):
        load_config(Outer, path)


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\nname: b\ninner: {token: t}\n")
    with pytest.raises(ConfigError, match="duplicate key 'name'"):
        load_config(Outer, path)


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(Outer, tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(Outer, write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Outer, write(tmp_path, "name: [unclosed\n"))


def test_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("abc123\n")
    assert read_secret_file(secret, key="k", config_path="c.yml") == "abc123"
    secret.write_text("\n")
    with pytest.raises(ConfigError, match=r"c.yml: k: secret file .* is empty"):
        read_secret_file(secret, key="k", config_path="c.yml")
    with pytest.raises(ConfigError, match=r"c.yml: k: cannot read secret file"):
        read_secret_file(tmp_path / "absent", key="k", config_path="c.yml")
