"""The one exception a configuration problem is reported with.

Users fix their files with an editor, so every error names the file and the line, the way a
compiler does (`bywg0.conf:7: AllowedIPs: '10.0.0.300/32' is not an IP network`).
"""

from __future__ import annotations


class ConfigError(ValueError):
    def __init__(self, filename: str, line: int | None, message: str):
        self.filename = filename
        self.line = line
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.filename}: {self.message}"
        return f"{self.filename}:{self.line}: {self.message}"

    def __reduce__(self):
        return (type(self), (self.filename, self.line, self.message))
