"""Onboarding (DESIGN.md §5a, invites and the join page): the invites themselves (`invites`,
sans-IO values and rules), making, listing, revoking and redeeming them through the registry
(`onboarding`), the routes (`routes`), and the server-rendered page (`page`, with its
`templates/` and `static/` files, vendored libraries included).

Nothing is imported here, so that `tether.api.state` may use `invites` without pulling in the
routes (which sit above the state in the api layer).
"""
