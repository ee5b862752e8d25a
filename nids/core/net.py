"""Address fields: one validator for every IPv4/IPv6 field of every schema."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator


def ip_text(value: str | None) -> str | None:
    """Canonical text of an IPv4/IPv6 address; ValueError naming the value otherwise."""
    if value is None:
        return None
    if "%" in value:  # Python accepts an IPv6 scope id (fe80::1%eth0) of any text, which then reaches nft's argv
        raise ValueError(f"{value!r} carries an IPv6 zone id (after '%'); send the address without it")
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"{value!r} is not a valid IPv4 or IPv6 address") from None


# an optional address field, stored in canonical form
IpAddress = Annotated[str | None, AfterValidator(ip_text)]
