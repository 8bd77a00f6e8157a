"""The SQLite store keeps only hashes of keys; the policy decides on groups and logins."""

import pytest

from serve_app.access.policy import Policy, Principal
from serve_app.config import PolicyConfig
from serve_app.errors import PermissionDeniedError
from serve_app.store import SqliteStore, StoreError, UsageRecord, new_api_key


def test_keys_are_stored_hashed_and_found_by_key(tmp_path):
    store = SqliteStore(tmp_path / "first.db")
    key = new_api_key()
    made = store.add_key(key, "ann", ["g1", "g2"])
    assert key.encode() not in (tmp_path / "first.db").read_bytes()
    found = store.find_key(key)
    assert found is not None and found.key_id == made.key_id and found.groups == ["g1", "g2"]
    assert store.find_key(new_api_key()) is None
    assert store.revoke_key(made.key_id).revoked_at is not None
    assert store.find_key(key).revoked_at is not None
    with pytest.raises(StoreError, match="no key with id"):
        store.revoke_key("k-missing")
    with pytest.raises(StoreError, match="already registered"):
        store.add_key(key, "bob", [])


def test_usage_records_round_trip(tmp_path):
    store = SqliteStore(tmp_path / "first.db")
    record = UsageRecord(
        time=1.0,
        request_id="r1",
        user="ann",
        credential="api-key",
        route="/v1/completions",
        model="m",
        site="s",
        status=200,
        prompt_tokens=3,
        completion_tokens=4,
        latency_s=0.1,
    )
    store.append_usage([record, record.model_copy(update={"user": "bob"})])
    assert store.usage("ann") == [record]
    assert len(store.usage()) == 2


def test_unwritable_store_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot open the store"):
        SqliteStore(tmp_path / "file" / "first.db")


POLICY = Policy(
    PolicyConfig(
        identity_domains=["uni.edu"],
        groups=["members"],
        models={"secret": {"groups": ["insiders"]}},
    )
)


def caller(user="ann@uni.edu", credential="globus", groups=("members",), idp=None) -> Principal:
    return Principal(user, credential, frozenset(groups), identity_provider=idp)


def test_policy_admits_members_from_allowed_domains():
    POLICY.admit(caller())
    with pytest.raises(PermissionDeniedError, match=r"other\.org"):
        POLICY.admit(caller(user="eve@other.org"))
    with pytest.raises(PermissionDeniedError, match="not a member"):
        POLICY.admit(caller(groups=()))


def test_identity_allowlist_applies_to_globus_logins_only():
    POLICY.admit(caller(user="service-account", credential="api-key"))


def test_identity_provider_allowlist_is_an_alternative_to_the_domain():
    policy = Policy(PolicyConfig(identity_domains=["uni.edu"], identity_providers=["idp-1"]))
    policy.admit(caller(user="ann@partner.org", idp="idp-1"))
    with pytest.raises(PermissionDeniedError):
        policy.admit(caller(user="ann@partner.org", idp="idp-2"))


def test_restricted_model_needs_its_group():
    assert POLICY.may_use(caller(), "open-model")
    assert not POLICY.may_use(caller(), "secret")
    assert POLICY.may_use(caller(groups=("members", "insiders")), "secret")
    with pytest.raises(PermissionDeniedError, match="restricted"):
        POLICY.require_model(caller(), "secret")
