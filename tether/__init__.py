"""tetherctl: userspace WireGuard devices with an exit to the host's network."""

__version__ = "0.1.0"
