"""Which network addresses and Host names count as this machine (loopback).

Used by every server subterra starts (the studio, `subterra serve`) to warn before binding beyond this
machine and to check the Host header of requests.
"""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "localhost.localdomain"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the loopback names; a hostname is never resolved."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
