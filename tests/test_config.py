"""Settings: YAML, environment and overrides, with errors that name the file, key and reason."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from kodo_bus.config import DEFAULT_NATS_URL, ConnectSettings, ServiceSettings, nats_urls
from kodo_bus.errors import ConfigError


def test_yaml_env_and_overrides_in_that_order(tmp_path: Path) -> None:
    file = tmp_path / "node.yaml"
    file.write_text(
        "id: n1\nrole: node\norganization: acme\nheartbeat: 2\nflows:\n  - module: examples.hello\n"
    )
    s = ServiceSettings.build(
        file,
        env={"KODO_ORGANIZATION": "from-env", "KODO_NATS": "nats://a:1, nats://b:2"},
        overrides={"heartbeat": 1.0, "ttl": None},
    )
    assert s.id == "n1" and s.organization == "from-env"
    assert s.nats == ["nats://a:1", "nats://b:2"]
    assert s.heartbeat == 1.0 and s.liveness_ttl == 3.0
    assert s.flows[0].module == "examples.hello"


def test_unknown_key_names_file_key_and_reason(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("id: n1\nheartbaet: 5\n")
    with pytest.raises(ConfigError) as info:
        ServiceSettings.build(file, env={})
    assert str(file) in str(info.value)
    assert "heartbaet" in str(info.value) and "Extra inputs are not permitted" in str(info.value)


def test_bad_value_and_bad_flow_declaration(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("id: n1\nheartbeat: -1\nflows:\n  - {name: x}\n")
    with pytest.raises(ConfigError) as info:
        ServiceSettings.build(file, env={})
    text = str(info.value)
    assert "heartbeat: Input should be greater than 0" in text
    assert "flows.0" in text and "exactly one of" in text


def test_id_must_fit_in_a_subject() -> None:
    with pytest.raises(ConfigError, match="cannot be used in NATS subjects"):
        ServiceSettings.build(env={}, overrides={"id": "my.node"})


def test_role_decides_feed_by_default() -> None:
    assert ServiceSettings(id="r", role="registry").feeds is True
    assert ServiceSettings(id="p", role="provider").feeds is False
    assert ServiceSettings(id="h", role="hybrid").feeds is False
    assert ServiceSettings(id="n", role="node", feed=True).feeds is False


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        ServiceSettings.build(tmp_path / "nope.yaml", env={})
    file = tmp_path / "list.yaml"
    file.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        ServiceSettings.build(file, env={})


def test_kodo_nats_is_the_one_variable_and_kodo_nats_url_a_deprecated_alias() -> None:
    both = {"KODO_NATS": "nats://a:1, nats://b:2", "KODO_NATS_URL": "nats://old:3"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # KODO_NATS set: the alias is not even looked at
        assert nats_urls(env=both) == ["nats://a:1", "nats://b:2"]
        assert ServiceSettings.build(env=both).nats == ["nats://a:1", "nats://b:2"]
        assert nats_urls(env={}) == [DEFAULT_NATS_URL]
        assert nats_urls("nats://x:1,nats://y:2", env=both) == ["nats://x:1", "nats://y:2"]
        assert nats_urls(["nats://x:1", "nats://y:2,nats://z:3"], env=both) == [
            "nats://x:1",
            "nats://y:2",
            "nats://z:3",
        ]
    old = {"KODO_NATS": "", "KODO_NATS_URL": "nats://old:3,nats://old:4"}
    with pytest.warns(DeprecationWarning, match="KODO_NATS_URL is deprecated: set KODO_NATS"):
        assert nats_urls(env=old) == ["nats://old:3", "nats://old:4"]
    with pytest.warns(DeprecationWarning):
        assert ServiceSettings.build(env=old).nats == ["nats://old:3", "nats://old:4"]
    with pytest.warns(DeprecationWarning):
        assert ConnectSettings.from_env(old).nats == ["nats://old:3", "nats://old:4"]
