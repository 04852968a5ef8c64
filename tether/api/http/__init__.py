"""The API over HTTP: the Bottle app and its routes, who is calling and how often, the hardened
waitress server, and the Prometheus metrics."""
