"""Which URLs webhooks may be sent to. Keel sends requests on an operator's behalf from inside
the operator's network, so a URL naming a loopback, private, link-local or otherwise
non-public address would let an admin key reach internal services (SSRF). Such targets are
refused unless the operator's setting allows them (tests, or a deliberate internal receiver).

The check is made when an endpoint is registered, again before every attempt (a name may
later resolve elsewhere: DNS rebinding), and last when the sender connects: it resolves the
name once, checks those addresses and connects to them (`keel.webhooks.http_sender`), so no
answer given between a check and the connection is ever used."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from urllib.parse import urlsplit

from keel.domain.errors import FieldError, ValidationFailed
from keel.service.webhook_ports import AddressResolver

MAX_URL_LENGTH = 2048


def check_url_shape(url: str, *, where: str = "/url") -> str:
    """The host of a well-formed http(s) URL; raises `ValidationFailed` otherwise."""

    def refuse(message: str) -> ValidationFailed:
        return ValidationFailed([FieldError(where, message)])

    if len(url) > MAX_URL_LENGTH:
        raise refuse(f"at most {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise refuse("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise refuse("not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise refuse("must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        # They would be stored and logged as part of the URL; authenticate receivers by signature.
        raise refuse("must not carry credentials")
    if not parts.hostname:
        raise refuse("must name a host")
    if not _valid_host(parts.hostname):
        raise refuse("the host is not a valid host name or address")
    if parts.fragment:
        raise refuse("must not have a fragment")
    if port == 0:
        raise refuse("port 0 is not a valid port")
    return parts.hostname


def _valid_host(host: str) -> bool:
    """An IP address, or a name DNS can carry (labels of 1-63 octets, 253 in all, after IDNA)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        encoded = host.encode("idna")
    except UnicodeError:
        return False
    labels = encoded.rstrip(b".").split(b".")
    return len(encoded) <= 253 and all(0 < len(label) <= 63 for label in labels)


# IPv6 ranges that carry an IPv4 address in their last 32 bits: NAT64's well-known prefix
# (RFC 6052; a translator on the way reaches the IPv4 address) and the deprecated
# IPv4-compatible addresses.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# Local-use NAT64 (RFC 8215): a translator of the operator's own; never public.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def _carried_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64, compatible)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(address: str) -> bool:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _LOCAL_NAT64:
            return False
        ip = _carried_ipv4(ip) or ip
    return ip.is_global and not ip.is_multicast


async def target_addresses(host: str, resolver: AddressResolver) -> list[str]:
    """The addresses `host` is (an IP literal) or resolves to. Raises `OSError` when it does
    not resolve."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return await resolver.addresses(host)


def first_refused(addresses: list[str]) -> str | None:
    """The first non-public address among `addresses`, or None when all are public."""
    return next((a for a in addresses if not is_public_address(a)), None)


async def refused_address(host: str, resolver: AddressResolver) -> str | None:
    """A non-public address `host` is or resolves to (the first), or None when all are public.
    Raises `OSError` when it does not resolve."""
    return first_refused(await target_addresses(host, resolver))


async def check_target(
    url: str, resolver: AddressResolver, client_host: Callable[[str], str | None], *, allow_private: bool
) -> None:
    """Raises `ValidationFailed` for a URL webhooks may not be sent to. `client_host` is the
    host the HTTP client connects to for a URL (None: it refuses the URL); that host is the one
    checked, so the check and the connection agree on the name (IDNA 2003 and 2008 differ)."""
    check_url_shape(url)
    host = client_host(url)
    if host is None:
        raise ValidationFailed(
            [FieldError("/url", "the HTTP client refuses this URL (the host is not a valid IDNA 2008 name)")]
        )
    if allow_private:
        return
    try:
        refused = await refused_address(host, resolver)
    except OSError:
        raise ValidationFailed([FieldError("/url", "the host does not resolve")]) from None
    if refused is not None:
        raise ValidationFailed(
            [FieldError("/url", "must reach a public address (loopback, private and link-local are refused)")]
        )
