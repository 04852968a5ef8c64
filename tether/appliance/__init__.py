"""The appliance: devices brought up from files and kept in line with them.

What other layers (the CLI) may use, by module: `daemon` (Daemon, `tetherctl run`), `detach`
(`up`/`down` of a detached daemon), `saveconfig` (SaveConfig's fold of a running device into its
file), `hooks` (PreUp/PostUp/PreDown/PostDown). `hub`, `reconcile`, `watcher` and `notify` are
the daemon's parts.
"""

__all__ = ["daemon", "detach", "hooks", "saveconfig"]
