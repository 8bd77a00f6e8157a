"""What the gateway host's sshd needs for the sites' SSH tunnels (the ssh-tunnel transport).

One account (`first-tunnel` by default) takes every site's tunnel, and may
do nothing else: no shell, no command, no TTY, no agent or X11, no outbound
forwarding; only remote forwarding (`-R`), which the site's connector uses.
Each site's key may listen on its own port (`transport.port`) and no other,
so one site cannot take over, or listen in on, another's proxy. Both pieces
are written from the federation config (`first gateway tunnel-config`), so
they never drift from the ports the gateway dials.
"""

from __future__ import annotations

from serve_app.config import FederationConfig, SshTunnelTransportConfig

TUNNEL_USER = "first-tunnel"


def sshd_match_block(user: str = TUNNEL_USER) -> str:
    """The sshd_config lines that confine `user` to remote port forwarding."""
    return "\n".join(
        [
            f"Match User {user}",
            "    AuthenticationMethods publickey",
            "    AllowTcpForwarding remote",
            "    AllowStreamLocalForwarding no",
            "    AllowAgentForwarding no",
            "    X11Forwarding no",
            "    PermitTunnel no",
            "    PermitTTY no",
            "    PermitOpen none",
            "    GatewayPorts no",
            "    ForceCommand /bin/false",
            "",
        ]
    )


def authorized_keys(config: FederationConfig) -> str:
    """The tunnel account's authorized_keys: each site's key, allowed its own port only.

    ValueError names a tunnel site without a `public_key`.
    """
    lines = []
    for index, site in enumerate(config.sites):
        tunnel = site.transport
        if not isinstance(tunnel, SshTunnelTransportConfig):
            continue
        if tunnel.public_key is None:
            raise ValueError(
                f"sites[{index}] ({site.name}).transport.public_key: needed to let the "
                "site's key open its port"
            )
        options = f'restrict,port-forwarding,permitlisten="localhost:{tunnel.port}"'
        key = " ".join(tunnel.public_key.split()[:2])
        lines.append(f"{options} {key} first-site-{site.name}")
    return "\n".join(lines) + "\n" if lines else ""
