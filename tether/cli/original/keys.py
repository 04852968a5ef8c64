"""The original's key commands, kept for its scripts: `gen-priv-key` and `gen-pub-key`.

They print what `tetherctl genkey` and `pubkey` print, but take the private key as the option
`--priv_key` (the original's spelling) rather than on stdin.
"""

from __future__ import annotations

from tether import keys
from tether.cli.original.session import Command, CommandError, Session, emit


def cmd_gen_priv_key(args, session: Session) -> None:
    """A new private key (as `tetherctl genkey`)."""
    emit(session, keys.genkey())


def cmd_gen_pub_key(args, session: Session) -> None:
    """The public key of --priv_key (as `tetherctl pubkey`)."""
    try:
        emit(session, keys.pubkey(args.priv_key))
    except keys.InvalidKey as e:
        raise CommandError(f"--priv_key: {e}") from None


COMMANDS = (
    Command("gen-priv-key", cmd_gen_priv_key, "print a new private key"),
    Command(
        "gen-pub-key", cmd_gen_pub_key, "print the public key of --priv_key", required=("priv_key",)
    ),
)
