"""Federation files: the shipped ones load, colocation is applied, each mistake is named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.config_loading import ConfigError
from deployments.ssh_connector import ssh_command
from serve_app.config import (
    COLOCATED_PREFIX,
    FederationConfig,
    GlobusComputeChannelConfig,
    load_federation,
)
from serve_app.routing.tunnels import authorized_keys, sshd_match_block

REPO = Path(__file__).resolve().parents[2]
FEDERATION_FILES = sorted(
    path
    for path in (REPO / "cluster_configs").glob("*.yaml")
    if "sites" in yaml.safe_load(path.read_text())
)
ENDPOINT = "2f2d6c2a-9a8e-4b8e-9d3a-1c1b0d7f4e21"


def test_the_shipped_default_is_among_the_federation_files():
    assert REPO / "cluster_configs" / "local-federation.yaml" in FEDERATION_FILES


@pytest.mark.parametrize("path", FEDERATION_FILES, ids=lambda p: p.name)
def test_every_shipped_federation_file_loads_with_its_site_files(path):
    federation = load_federation(path)
    for site in federation.sites:
        assert site.site_config.models
        assert site.url.startswith("http")


def test_a_colocated_site_shares_the_gateway_cluster_and_proxy():
    federation = load_federation(REPO / "cluster_configs" / "local-federation.yaml")
    (local,) = federation.sites
    site = local.site_config
    assert local.colocated
    assert site.ray == federation.gateway.ray
    assert (site.serve.host, site.serve.port) == (federation.gateway.host, federation.gateway.port)
    assert site.serve.route_prefix == f"{COLOCATED_PREFIX}/local"
    assert site.serve.app_name != federation.gateway.app_name
    assert local.url == f"http://127.0.0.1:8000{COLOCATED_PREFIX}/local"


def _simulated_site(name: str = "s") -> dict:
    return {"name": name, "models": [{"id": "m", "engine": "simulated"}]}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_site_files_resolve_relative_to_the_federation_file(tmp_path):
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "east.yaml").write_text(yaml.safe_dump(_simulated_site("east")))
    path = _write(tmp_path, {"sites": [{"name": "east", "site": "sites/east.yaml"}]})
    (east,) = load_federation(path).sites
    assert east.site_config.name == "east"
    assert east.url == "http://127.0.0.1:8000"


def test_a_remote_site_with_globus_compute_and_an_explicit_url(tmp_path):
    path = _write(
        tmp_path,
        {
            "sites": [
                {
                    "name": "polaris",
                    "site": _simulated_site(),
                    "base_url": "https://polaris.example.org/serve/",
                    "channel": {"kind": "globus-compute", "endpoint_id": ENDPOINT},
                    "priority": 2,
                }
            ]
        },
    )
    (polaris,) = load_federation(path).sites
    assert isinstance(polaris.channel, GlobusComputeChannelConfig)
    assert str(polaris.channel.endpoint_id) == ENDPOINT
    assert polaris.channel.poll_interval_s == 15
    assert polaris.url == "https://polaris.example.org/serve"


def _federation(**site) -> dict:
    return {"sites": [{"name": "s", "site": _simulated_site(), **site}]}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"sites": []}, "sites: List should have at least 1 item"),
        (
            {**_federation(), "placement": {"policy": "fastest"}},
            "placement.policy: Input should be",
        ),
        ({**_federation(), "gateway": {"prot": 80}}, "gateway.prot: unknown field"),
        (
            {**_federation(), "gateway": {"autoscaling": {"min_replicas": 4, "max_replicas": 1}}},
            "gateway.autoscaling:",
        ),
        (_federation(channel={"kind": "ssh"}), "sites[0].channel: Input tag 'ssh' found"),
        (
            _federation(channel={"kind": "globus-compute"}),
            "sites[0].channel.globus-compute.endpoint_id: Field required",
        ),
        (
            _federation(channel={"kind": "globus-compute", "endpoint_id": "polaris"}),
            "sites[0].channel.globus-compute.endpoint_id: Input should be a valid UUID",
        ),
        (_federation(base_url="polaris:8000"), "sites[0].base_url: String should match"),
        (_federation(timeouts={"connect_s": 0}), "sites[0].timeouts.connect_s: Input should be"),
        (_federation(site="absent.yaml"), "sites[0].site: "),
        (
            {"sites": [{"name": "s", "site": _simulated_site()}] * 2},
            "sites[1].name: duplicate site name 's'",
        ),
        (_federation(name="S P"), "sites[0].name: String should match pattern"),
        (
            _federation(transport={"kind": "ssh-tunnel", "port": 10001}),
            "sites[0].transport: a site reached by ssh-tunnel runs its site "
            "functions at the site: give it a channel of kind globus-compute or endpoint-engine",
        ),
        (
            _federation(transport={"kind": "globus-compute"}),
            "transport: a site reached by globus-compute runs its site functions at the site",
        ),
        (
            _federation(
                colocated=True,
                transport={"kind": "ssh-tunnel", "port": 10001},
                channel={"kind": "endpoint-engine"},
            ),
            "transport: a colocated site is reached directly, not by ssh-tunnel",
        ),
        (
            _federation(
                transport={"kind": "globus-compute", "max_payload_bytes": 11_000_000},
                channel={"kind": "endpoint-engine"},
            ),
            "sites[0].transport.globus-compute.max_payload_bytes: Input should be less than",
        ),
        (
            _federation(transport={"kind": "ssh-tunnel", "port": 22}),
            "sites[0].transport.ssh-tunnel.port: Input should be greater than or equal to 1024",
        ),
        (
            _federation(channel={"kind": "endpoint-engine", "listen": "gateway"}),
            "sites[0].channel.endpoint-engine.listen: String should match pattern",
        ),
    ],
)
def test_bad_federation_file_fails_naming_file_and_field(tmp_path, data, expected):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_federation(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_a_bad_field_in_a_named_site_file_names_both_files(tmp_path):
    (tmp_path / "east.yaml").write_text(
        yaml.safe_dump({"name": "east", "models": [{"id": "m", "engine": "sglang"}]})
    )
    path = _write(tmp_path, {"sites": [{"name": "east", "site": "east.yaml"}]})
    with pytest.raises(ConfigError) as caught:
        load_federation(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: sites[0].site: {tmp_path / 'east.yaml'}: ")
    assert "models[0].engine" in message


def test_policy_restricting_a_model_no_site_serves_is_a_config_error():
    site = {"name": "s", "models": [{"id": "m", "engine": "simulated"}]}
    with pytest.raises(ValidationError, match=r"policy\.models\.mm: no site serves this model"):
        FederationConfig.model_validate(
            {
                "sites": [{"name": "s", "site": site}],
                "policy": {"models": {"mm": {"groups": ["g"]}}},
            }
        )


def _with_tribunal(tribunal: dict) -> dict:
    site = {"name": "s", "models": [{"id": m, "engine": "simulated"} for m in ("a", "b")]}
    return {"sites": [{"name": "s", "site": site}], "tribunals": [tribunal]}


def test_a_tribunal_over_served_models_loads_with_working_default_prompts():
    config = FederationConfig.model_validate(
        _with_tribunal({"name": "t", "generator": "a", "critics": ["b", "a"], "reviser": "a"})
    )
    (tribunal,) = config.tribunals
    assert tribunal.rounds == 1 and tribunal.members == ["a", "b"]
    assert "{answer}" in tribunal.prompts.critic and "{critiques}" in tribunal.prompts.revise
    tribunal.prompts.critic.format(conversation="user: hi", answer="hello")


@pytest.mark.parametrize(
    ("tribunal", "words"),
    [
        ({"critics": ["nope"]}, r"tribunals\[0\]: no site serves the model 'nope'"),
        ({"name": "a"}, r"tribunals\[0\]\.name: 'a' is a model a site serves"),
        ({"critics": []}, r"tribunals\.0\.critics"),
        ({"rounds": 0}, r"tribunals\.0\.rounds"),
        ({"prompts": {"critic": "{draft}"}}, r"unknown field \{draft\}; the fields are"),
        ({"prompts": {"revise": "{critiques"}}, r"not a format string"),
    ],
    ids=[
        "unserved-member",
        "name-of-a-model",
        "no-critics",
        "no-rounds",
        "unknown-field",
        "bad-format",
    ],
)
def test_a_tribunal_mistake_is_named(tribunal, words):
    base = {"name": "t", "generator": "a", "critics": ["b"], "reviser": "a"}
    with pytest.raises(ValidationError, match=words):
        FederationConfig.model_validate(_with_tribunal({**base, **tribunal}))


def _with_aliases(aliases: dict) -> dict:
    config = _with_tribunal({"name": "t", "generator": "a", "critics": ["b"], "reviser": "a"})
    return {**config, "aliases": aliases}


def test_aliases_name_served_models_and_tribunals():
    config = FederationConfig.model_validate(_with_aliases({"old-a": "a", "panel": "t"}))
    assert config.aliases == {"old-a": "a", "panel": "t"}


@pytest.mark.parametrize(
    ("aliases", "words"),
    [
        ({"x": "nope"}, r"aliases\.x: 'nope' is neither a model a site serves nor a tribunal"),
        ({"a": "b"}, r"aliases\.a: 'a' is a model a site serves; an alias needs a name"),
        ({"t": "a"}, r"aliases\.t: 't' is a tribunal's name; an alias needs a name"),
    ],
    ids=["unknown-target", "hides-a-model", "hides-a-tribunal"],
)
def test_an_alias_mistake_is_named(aliases, words):
    with pytest.raises(ValidationError, match=words):
        FederationConfig.model_validate(_with_aliases(aliases))


def test_sites_behind_firewalls_get_their_transports_and_tunnel_lines(tmp_path):
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx site-east@login"
    path = _write(
        tmp_path,
        {
            "sites": [
                {
                    "name": "east",
                    "site": _simulated_site(),
                    "channel": {"kind": "globus-compute", "endpoint_id": ENDPOINT},
                    "transport": {"kind": "ssh-tunnel", "port": 10001, "public_key": key},
                },
                {
                    "name": "west",
                    "site": _simulated_site(),
                    "channel": {"kind": "endpoint-engine", "listen": "0.0.0.0:7001"},
                    "transport": {"kind": "globus-compute"},
                },
                {"name": "here", "site": _simulated_site()},
            ]
        },
    )
    config = load_federation(path)
    east, west, here = config.sites
    assert (east.transport.kind, east.streams) == ("ssh-tunnel", True)
    assert (west.transport.kind, west.streams) == ("globus-compute", False)
    assert west.transport.max_payload_bytes == 10 * 1024 * 1024
    assert (here.transport.kind, here.streams) == ("direct", True)
    assert authorized_keys(config) == (
        'restrict,port-forwarding,permitlisten="localhost:10001" '
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx first-site-east\n"
    )
    assert "ForceCommand /bin/false" in sshd_match_block("tunnels")


def test_a_tunnel_site_without_its_key_cannot_get_tunnel_lines(tmp_path):
    path = _write(
        tmp_path,
        _federation(
            channel={"kind": "endpoint-engine"}, transport={"kind": "ssh-tunnel", "port": 10001}
        ),
    )
    with pytest.raises(ValueError, match=r"sites\[0\] \(s\)\.transport\.public_key: needed"):
        authorized_keys(load_federation(path))


def test_the_connectors_ssh_command_forwards_its_port_and_never_prompts():
    command = ssh_command(("gw.example.org", 2222), "first-tunnel", "/k", 10001, "/known")
    assert command[:9] == ["ssh", "-N", "-T", "-i", "/k", "-p", "2222", "-R", "10001"]
    assert command[-1] == "first-tunnel@gw.example.org"
    for option in ("BatchMode=yes", "ExitOnForwardFailure=yes", "StrictHostKeyChecking=yes"):
        assert option in command
