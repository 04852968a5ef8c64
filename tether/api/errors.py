"""The outcomes of a peer or invite operation that are not a success, as exceptions that carry
their HTTP status: the API answers with the status and the one-line message, the commands print
the message. A module of its own so that every part of the API (peers, invites, the join page)
raises the same errors without importing each other.
"""

from __future__ import annotations


class PeerError(Exception):
    """A request that cannot be served; `status` is the HTTP status, the message one line that
    is safe to show to the client."""

    status = 500


class BadRequest(PeerError):
    """The request itself is wrong (a bad key or endpoint type): 400."""

    status = 400


class NotFound(PeerError):
    """No such peer or device: 404."""

    status = 404


class Conflict(PeerError):
    """The peer exists already: 409."""

    status = 409


class Unavailable(PeerError):
    """The device cannot serve this now (no free address, a cap reached, a broken file or
    state): 503."""

    status = 503


class Forbidden(PeerError):
    """The caller may not do this (not the admin, not the owner): 403."""

    status = 403


class Gone(PeerError):
    """An invite that existed but admits nobody any more (used up or expired): 410."""

    status = 410
