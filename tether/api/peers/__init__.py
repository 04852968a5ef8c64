"""The peers a device serves through the API: the operations the HTTP routes and the `peer`
commands share, address allocation, client configs, public endpoints, ownership and expiry."""
