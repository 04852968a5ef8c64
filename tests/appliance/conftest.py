from .daemon_harness import daemon  # noqa: F401  (fixture)
