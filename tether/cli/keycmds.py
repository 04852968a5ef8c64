"""`genkey`, `genpsk`, `pubkey`: byte-for-byte the behaviour of `wg genkey|genpsk|pubkey`.

People script these (`tetherctl genkey | tee priv | tetherctl pubkey > pub`), so output is
exactly the 44-character key and a newline, and errors go to stderr with status 1 and nothing on
stdout.
"""

from __future__ import annotations

import os
import stat
import sys

from tether import keys


def register(sub) -> None:
    """Add `genkey`, `genpsk` and `pubkey` to the top-level parser."""
    for name, func, help_text in (
        ("genkey", cmd_genkey, "print a new private key (as `wg genkey`)"),
        ("genpsk", cmd_genpsk, "print a new preshared key (as `wg genpsk`)"),
        (
            "pubkey",
            cmd_pubkey,
            "print the public key of the key on stdin (as `wg pubkey`)",
        ),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)


def _warn_if_world_accessible() -> None:
    """wg warns when a secret is about to land in a file others can read; so do we."""
    try:
        st = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return
    if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IRWXO:
        sys.stderr.write(
            "Warning: writing to world accessible file.\n"
            "Consider setting the umask to 077 and trying again.\n"
        )


def cmd_genkey(args) -> int:
    """A new private key on stdout, as `wg genkey` prints it."""
    _warn_if_world_accessible()
    print(keys.genkey())
    return 0


def cmd_genpsk(args) -> int:
    """A new preshared key on stdout, as `wg genpsk` prints it."""
    _warn_if_world_accessible()
    print(keys.genpsk())
    return 0


def cmd_pubkey(args) -> int:
    """The public key of the private key on stdin, with `wg pubkey`'s input rules and errors."""
    data = sys.stdin.buffer.read(4096)
    # Like wg: exactly 44 characters first, then only whitespace or NULs until end of input.
    head, tail = data[: keys.KEY_LEN_BASE64], data[keys.KEY_LEN_BASE64 :]
    if len(head) != keys.KEY_LEN_BASE64:
        return _err("Key is not the correct length or format")
    if tail.strip(b" \t\n\r\v\f\x00") or len(data) == 4096 and sys.stdin.buffer.read(1):
        return _err("Trailing characters found after key")
    try:
        private = keys.decode(head.decode("ascii"))
    except (UnicodeDecodeError, keys.InvalidKey):
        return _err("Key is not the correct length or format")
    print(keys.encode(keys.public_from_private(private)))
    return 0


def _err(message: str) -> int:
    sys.stderr.write(f"tetherctl: {message}\n")
    return 1
