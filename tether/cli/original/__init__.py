"""The original tetherctl's commands, with its option spelling, mapped onto the file model.

In the original, one long-running CLI process held the devices in memory: `add` created a
device object, `up --config=DIR` loaded `DIR/<dname>.conf` into it, `start-api` served the API
from that process. Here a device *is* its file `<config dir>/<dname>.conf`, a daemon runs it and
applies every edit, so each command becomes a file edit or a request to the daemon (README,
"The original's commands", has the table). `--dname` defaults to bywg0 and, inside `tetherctl
cli`, keeps the last value given; `--config` is the config directory. Every option also reads
TETHERCTL_<OPTION> (`--api_url` <- TETHERCTL_API_URL).

By concern: `devices` (add, remove, up, down, get-config, save-config, get-device-names,
get-device, change-device), `peers` (add-peer, remove-peer, get-peer-config), `api`
(start-api, stop-api, default-builder), `keys` (gen-priv-key, gen-pub-key); `session` holds what
they share and `registry` turns their table into parsers.
"""

from tether.cli.original.registry import COMMANDS, register, run_command, usage_line
from tether.cli.original.session import INITIAL_DNAME, Command, CommandError, Session

__all__ = [
    "COMMANDS",
    "INITIAL_DNAME",
    "Command",
    "CommandError",
    "Session",
    "register",
    "run_command",
    "usage_line",
]
