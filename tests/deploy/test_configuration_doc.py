"""docs/configuration.md against the config schemas: every key documented with its default, no key that does
not exist, and both examples load with the services' own loaders.

When this fails after you added or changed a config key, the message names the key, its section and its
default: add (or fix) that row of docs/configuration.md.
"""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel

from bridge.config import BridgeConfig
from bridge.config import load as load_bridge_config
from exporter.config import Config
from exporter.config import load as load_exporter_config
from tests.deploy.config_keys import keys
from tests.deploy.k8s import ROOT, SECRETS_DIR, with_secret_files

DOC = ROOT / "docs" / "configuration.md"
SCHEMAS: dict[str, type[BaseModel]] = {"Exporter": Config, "Bridge": BridgeConfig}


def _sections() -> dict[str, str]:
    parts = re.split(r"^## ", DOC.read_text(), flags=re.MULTILINE)
    return {part.split("\n", 1)[0].strip(): part for part in parts[1:]}


def _rows(section: str) -> dict[str, tuple[str, str]]:
    """key -> (default, meaning) of the section's table rows."""
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 4, f"docs/configuration.md: a row needs 4 cells (key, type, default, meaning): {line}"
        key, _, default, meaning = cells
        assert key.strip("`") not in rows, f"docs/configuration.md: key {key} has two rows"
        rows[key.strip("`")] = (default.strip("`"), meaning)
    return rows


@pytest.mark.parametrize("service", list(SCHEMAS))
def test_every_key_is_documented_with_its_default(service):
    sections = _sections()
    assert service in sections, f"docs/configuration.md has no '## {service}' section"
    documented = _rows(sections[service])
    schema = dict(keys(SCHEMAS[service]))
    problems = []
    for key, default in schema.items():
        if key not in documented:
            problems.append(
                f"{service} key `{key}` is not documented: add the row "
                f"| `{key}` | <type> | `{default}` | <what it does> | to the '## {service}' table"
            )
        elif documented[key][0] != default:
            problems.append(f"{service} key `{key}`: the row says default `{documented[key][0]}`, the schema's "
                            f"default is `{default}`")
        elif not documented[key][1]:
            problems.append(f"{service} key `{key}`: the row does not say what the key does")
    for key in documented.keys() - schema.keys():
        problems.append(f"{service} key `{key}` is documented but the schema has no such key: remove or rename its row")
    assert not problems, "docs/configuration.md is out of step with the config schema:\n" + "\n".join(problems)


def _example(service: str) -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", _sections()[service], flags=re.DOTALL)
    assert len(blocks) == 1, f"the '## {service}' section has one yaml example"
    return blocks[0]


def test_exporter_example_loads(tmp_path):
    path = tmp_path / "exporter.yml"
    path.write_text(with_secret_files(_example("Exporter"), SECRETS_DIR, tmp_path))
    (tmp_path / "file_sd").mkdir()
    config = load_exporter_config(path)
    assert {"internal_ca", "smtp_starttls", "cert_files"} <= set(config.modules)


def test_bridge_example_loads(tmp_path):
    path = tmp_path / "bridge.yml"
    path.write_text(with_secret_files(_example("Bridge"), SECRETS_DIR, tmp_path))
    loaded = load_bridge_config(path, env={})
    assert set(loaded.secrets.routing_keys) == {"production", "staging"} and loaded.secrets.bearer_token
