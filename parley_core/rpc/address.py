"""The client address of a request, for limits keyed by address.

The peer of the gRPC connection (``ipv4:1.2.3.4:5678``, ``ipv6:%5B::1%5D:5678``)
is the client unless it is one of ``limits.trusted_proxies``: then the client
is taken from ``x-forwarded-for``, walking it from the right (the hop the
proxy itself appended) past every trusted proxy to the first hop that is not
one. Entries to the left of that one were written by the client and are never
believed. A connection without an IP peer (a Unix socket) counts as
``local``.

IPv6 addresses are keyed by their /64, the block one subscriber gets, so a
client cannot rotate through its own addresses; IPv4-mapped ones count as
IPv4.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import unquote

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_FOR = "x-forwarded-for"
LOCAL = "local"


def _ip(text: str) -> IPAddress | None:
    """An address as a peer string or a forwarded hop may spell it: bare, or
    with a port (``1.2.3.4:80``, ``[::1]:80``), or bracketed."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_ip(peer: str) -> IPAddress | None:
    """The IP of a gRPC peer string; None for Unix sockets and anything else.
    gRPC percent-encodes the brackets of IPv6 peers (``ipv6:%5B::1%5D:5678``)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    return _ip(unquote(rest))


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def forwarded_hops(values: Iterable[str]) -> list[str]:
    """Every hop of every x-forwarded-for value, in order (left to right)."""
    return [hop.strip() for value in values for hop in value.split(",") if hop.strip()]


def client_ip(
    peer: str, forwarded_for: Iterable[str], proxies: Sequence[IPNetwork]
) -> IPAddress | None:
    """The client's address: the peer, or behind trusted proxies the
    rightmost forwarded hop that is not one (see the module's text)."""
    address = peer_ip(peer)
    if address is None or not proxies:
        return address
    hops = forwarded_hops(forwarded_for)
    while _trusted(address, proxies) and hops:
        hop = _ip(hops.pop())
        if hop is None:
            # A hop that is no address: the proxy before it is the last we know.
            break
        address = hop
    return address


def address_key(address: IPAddress | None) -> str:
    """The key a limit per address uses: IPv4 as is, IPv6 by its /64."""
    if address is None:
        return LOCAL
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ClientAddresses:
    """Finds the client address of a call; built once from ``limits.trusted_proxies``."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._proxies: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(p, strict=False) for p in trusted_proxies
        )

    def of(self, context: Any) -> str:
        """The limit key of the client address of the call ``context`` serves."""
        forwarded: list[str] = []
        if self._proxies:
            for key, value in context.invocation_metadata() or ():
                if key == FORWARDED_FOR:
                    forwarded.append(value.decode() if isinstance(value, bytes) else str(value))
        return address_key(client_ip(context.peer() or "", forwarded, self._proxies))
