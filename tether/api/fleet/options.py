"""Checking the fleet's options once at startup (`tetherctl run --fleet-etcd ...`), so that a
typo or an unreadable file is a one-line error then, not a failure later."""

from __future__ import annotations

import ipaddress
import os
import stat
import urllib.parse

from tether.api.fleet.device import FleetOptions
from tether.api.fleet.etcd import EtcdOptions
from tether.api.fleet.layout import check_prefix

MAX_PASSWORD = 1024


def fleet_options(
    urls: str,
    *,
    prefix: str | None = None,
    cacert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    user: str | None = None,
    password_file: str | None = None,
    password_env: str | None = None,
) -> FleetOptions:
    """The checked options; ValueError naming the option for anything wrong."""
    members = EtcdOptions.parse_urls(urls)
    for option, path in (
        ("--fleet-etcd-cacert", cacert),
        ("--fleet-etcd-cert", cert),
        ("--fleet-etcd-key", key),
    ):
        if path is not None and not os.access(path, os.R_OK):
            raise ValueError(f"{option} {path}: cannot read it")
    if (cert is None) != (key is None):
        raise ValueError("--fleet-etcd-cert and --fleet-etcd-key go together")
    if (cacert or cert) and not all(u.startswith("https://") for u in members):
        raise ValueError("--fleet-etcd: TLS options need https:// URLs")
    password = None
    if user is not None:
        if not user or len(user) > 128 or not user.isprintable() or ":" in user:
            raise ValueError("--fleet-etcd-user: expected a user name (no ':')")
        clear = [u for u in members if u.startswith("http://") and not _loopback(u)]
        if clear:
            raise ValueError(
                f"--fleet-etcd-user: {clear[0]} is plain http to another machine: the password "
                "and token would cross the network in clear (use https://)"
            )
        password = _password(password_file) if password_file else password_env
        if not password:
            raise ValueError(
                "--fleet-etcd-user needs a password: --fleet-etcd-password-file FILE or "
                "TETHERCTL_FLEET_ETCD_PASSWORD"
            )
    elif password_file:
        raise ValueError("--fleet-etcd-password-file needs --fleet-etcd-user")
    return FleetOptions(
        EtcdOptions(members, cacert, cert, key, user, password), check_prefix(prefix)
    )


def _loopback(url: str) -> bool:
    """Whether the member is this machine (plain http to it never leaves the host)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _password(path: str) -> str:
    """The first line of the password file, which others must not be able to read."""
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            password = f.readline(MAX_PASSWORD + 1).rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(
            f"--fleet-etcd-password-file {path}: cannot read: {getattr(e, 'strerror', e)}"
        ) from None
    if st.st_mode & stat.S_IRWXO:
        raise ValueError(f"--fleet-etcd-password-file {path}: readable by others (chmod 600 it)")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"--fleet-etcd-password-file {path}: longer than {MAX_PASSWORD}")
    return password
