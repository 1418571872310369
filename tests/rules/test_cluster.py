"""``[cluster]``: the engine URL and the settings, parsed once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securews.rules.cluster import EngineAddress, Keys, digest, parse_engine_url
from securews.rules.config import ConfigError
from securews.testing import make_config

TLS = {"cert": "/c", "key": "/k"}


@pytest.mark.parametrize(("url", "address"), [
    ("redis://r.example", EngineAddress("r.example", 6379)),
    ("redis://r.example:6380/3", EngineAddress("r.example", 6380, db=3)),
    ("rediss://securews@r.example:6380/0",
     EngineAddress("r.example", 6380, username="securews", tls=True)),
    ("redis://[2001:db8::5]:7000", EngineAddress("2001:db8::5", 7000)),
    ("unix:///run/redis/redis.sock", EngineAddress(path="/run/redis/redis.sock")),
    ("unix:///run/redis.sock?db=2", EngineAddress(path="/run/redis.sock", db=2)),
])
def test_engine_urls(url: str, address: EngineAddress) -> None:
    assert parse_engine_url(url) == address
    # What logs show parses back to the same address.
    assert parse_engine_url(str(address)) == address


@pytest.mark.parametrize(("url", "problem"), [
    ("redis://user:hunter2@r.example", "password_file"),
    ("http://r.example", "use redis://"),
    ("redis://r.example/16", "0 to 15"),
    ("redis://r.example?db=1", "no query"),
    ("redis://", "names no host"),
    ("unix://relative.sock", "unix:///absolute"),
    ("redis://r.example:99999", "not a valid URL"),
])
def test_bad_engine_urls(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_engine_url(url)


@given(st.text(max_size=80))
def test_any_text_is_an_address_or_a_value_error(url: str) -> None:
    try:
        address = parse_engine_url(url)
    except ValueError:
        return
    assert parse_engine_url(str(address)) == address


def test_a_password_in_the_url_is_a_config_error_that_does_not_show_it() -> None:
    with pytest.raises(ConfigError) as raised:
        make_config(tls=TLS, cluster={"redis_url": "redis://u:hunter2@r/0"})
    assert "hunter2" not in str(raised.value)
    assert "cluster.redis_url" in str(raised.value)


@pytest.mark.parametrize(("section", "key"), [
    ({"timeout": 0}, "cluster.timeout"),
    ({"lease": 0.5}, "cluster.lease"),
    ({"key_prefix": "bad prefix"}, "cluster.key_prefix"),
    ({"node_id": "a/b"}, "cluster.node_id"),
    ({"redis_url": "redis://r/0", "ca_file": "/ca.pem"}, "cluster.ca_file"),
])
def test_cluster_settings_are_checked(section: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config(tls=TLS, cluster=section)


def test_by_default_one_node_in_memory() -> None:
    assert not make_config(tls=TLS).cluster.enabled


def test_keys_hold_digests_of_ids() -> None:
    keys = Keys("p:")
    who = digest("alice")
    assert keys.revoked_principal(who) == f"p:revoked:principal:{who}"
    assert "alice" not in keys.revoked_principal(digest("alice"))
    assert len(digest("x" * 10_000)) == 40


@pytest.mark.parametrize("url", [
    "redis://:hunter2-Secret@redis.internal:99999/0",     # a port out of range
    "rediss://securews:hunter2-Secret@[::1/0",            # a broken IPv6 literal
    "redis://:hunter2/Secret@redis.internal/0",           # a '/' in the password
    "redis://:x@y:hunter2-Secret@host:1/0",               # an '@' in it
    "redis://:hunter2-Secret@host:notaport/0",            # the parser quotes the port
    "redis://:hunter2-Secret@host/0#fragment",
])
def test_a_password_in_the_url_is_never_in_the_error(url: str) -> None:
    """A password written into redis_url by mistake is refused, and no
    error about the URL ever repeats it (it would reach the journal)."""
    with pytest.raises(ValueError, match=r"URL|password") as refused:
        parse_engine_url(url)
    assert "hunter2" not in str(refused.value)
    assert "Secret" not in str(refused.value)
