"""The lossless layer under the configuration model: a file as sections of lines.

People keep notes in their WireGuard files (who owns which peer, why a port was chosen), so a
program that edits the file must not reflow it. The document keeps every line's exact text,
including its line ending, and edits replace, insert or delete whole lines (or only the value
part of one line). Joining the lines gives back the file byte for byte.

Syntax is wg-quick's: `[Section]` headers, `Key = Value` pairs, and `#` starting a comment
anywhere on a line (wg-quick cuts a line at its first `#`, so a `#` inside a hook command is a
comment there too, and here).
"""

from __future__ import annotations

from collections.abc import Iterator

from tether.config.errors import ConfigError

BLANK, COMMENT, SECTION, PAIR = range(4)

BOM = "\ufeff"


class Line:
    """One physical line; `raw` includes its line ending (none on an unterminated last line)."""

    __slots__ = ("raw", "kind", "key", "vstart", "vend", "lineno")

    def __init__(
        self, raw: str, kind: int, key: str = "", vstart: int = 0, vend: int = 0, lineno: int = 0
    ):
        self.raw = raw
        self.kind = kind
        self.key = key  # PAIR: the key as written, trimmed; SECTION: the name inside the brackets
        self.vstart = vstart
        self.vend = vend
        self.lineno = lineno  # 1-based position when the document was parsed

    @property
    def value(self) -> str:
        return self.raw[self.vstart : self.vend]

    def with_value(self, value: str) -> Line:
        raw = self.raw[: self.vstart] + value + self.raw[self.vend :]
        return Line(raw, PAIR, self.key, self.vstart, self.vstart + len(value), self.lineno)

    def __repr__(self) -> str:
        return f"Line({self.raw!r})"


def classify(raw: str, lineno: int, filename: str) -> Line:
    content = raw.rstrip("\r\n")
    hash_at = content.find("#")
    code = content if hash_at < 0 else content[:hash_at]
    stripped = code.strip()
    if not stripped:
        return Line(raw, COMMENT if hash_at >= 0 else BLANK, lineno=lineno)
    if stripped[0] == "[":
        if stripped[-1] != "]":
            raise ConfigError(filename, lineno, f"section header {stripped!r} has no closing ']'")
        return Line(raw, SECTION, stripped[1:-1].strip(), lineno=lineno)
    eq = code.find("=")
    if eq < 0:
        raise ConfigError(
            filename,
            lineno,
            f"{_show(stripped)} is not a [Section], a Key = Value pair or a # comment",
        )
    key = code[:eq].strip()
    if not key:
        raise ConfigError(filename, lineno, "a value with no key before '='")
    vstart = eq + 1
    while vstart < len(code) and code[vstart] in " \t":
        vstart += 1
    vend = len(code.rstrip())
    vend = max(vend, vstart)
    return Line(raw, PAIR, key, vstart, vend, lineno)


def _show(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class Section:
    """A header line and the lines up to the next header; the preamble has no header."""

    __slots__ = ("header", "body")

    def __init__(self, header: Line | None, body: list[Line] | None = None):
        self.header = header
        self.body = body if body is not None else []

    @property
    def name(self) -> str:
        return self.header.key.lower() if self.header is not None else ""

    def lines(self) -> Iterator[Line]:
        if self.header is not None:
            yield self.header
        yield from self.body

    def pairs(self) -> Iterator[Line]:
        return (line for line in self.body if line.kind == PAIR)

    def leading_comment_count(self) -> int:
        """How many lines at the end of this body are a comment block glued to the next header.

        A comment directly above a `[Peer]` (no blank line between) describes that peer, so it
        moves and disappears with it, not with the section it happens to sit in.
        """
        n = 0
        for line in reversed(self.body):
            if line.kind != COMMENT:
                break
            n += 1
        return n


class Document:
    def __init__(
        self, filename: str, preamble: Section, sections: list[Section], newline: str, bom: bool
    ):
        self.filename = filename
        self.preamble = preamble
        self.sections = sections
        self.newline = newline
        self.bom = bom

    @classmethod
    def parse(cls, text: str, filename: str = "<config>") -> Document:
        bom = text.startswith(BOM)
        if bom:
            text = text[1:]
        if "\x00" in text:
            lineno = text.count("\n", 0, text.index("\x00")) + 1
            raise ConfigError(filename, lineno, "the file contains a NUL byte")
        parts = text.split("\n")
        raws = [p + "\n" for p in parts[:-1]]
        if parts[-1]:
            raws.append(parts[-1])
        crlf = sum(1 for r in raws if r.endswith("\r\n"))
        newline = "\r\n" if crlf * 2 > len(raws) else "\n"
        preamble = Section(None)
        sections: list[Section] = []
        current = preamble
        for lineno, raw in enumerate(raws, 1):
            line = classify(raw, lineno, filename)
            if line.kind == SECTION:
                current = Section(line)
                sections.append(current)
            else:
                current.body.append(line)
        return cls(filename, preamble, sections, newline, bom)

    def text(self) -> str:
        # one flat comprehension: this runs on every write of a 10,000-peer file
        out = [BOM] if self.bom else []
        out += [line.raw for line in self.preamble.body]
        out += [
            line.raw
            for section in self.sections
            for line in (section.header, *section.body)
        ]
        return "".join(out)

    # -- line-level edits ---------------------------------------------------------------------

    def new_pair(self, key: str, value: str) -> Line:
        raw = f"{key} = {value}{self.newline}"
        return Line(raw, PAIR, key, len(key) + 3, len(key) + 3 + len(value))

    def _terminate_last_line(self) -> None:
        """Give the file's last line an ending before anything is appended after it."""
        last_section = self.sections[-1] if self.sections else self.preamble
        lines = last_section.body or ([last_section.header] if last_section.header else [])
        if lines and not lines[-1].raw.endswith("\n"):
            line = lines[-1]
            fixed = Line(
                line.raw + self.newline, line.kind, line.key, line.vstart, line.vend, line.lineno
            )
            if last_section.body:
                last_section.body[-1] = fixed
            else:
                last_section.header = fixed

    def set_pair_lines(
        self, section: Section, key_lower: str, canonical: str, values: list[str]
    ) -> None:
        """Make `section` hold exactly one line per value for this key, touching as few lines as
        possible: existing lines are rewritten in place (their key spelling, spacing and trailing
        comments kept), surplus ones deleted, missing ones inserted after the section's last pair.
        """
        existing = [
            i
            for i, line in enumerate(section.body)
            if line.kind == PAIR and line.key.lower() == key_lower
        ]
        for i, value in zip(existing, values, strict=False):
            if section.body[i].value != value:
                section.body[i] = section.body[i].with_value(value)
        for i in reversed(existing[len(values) :]):
            del section.body[i]
        extra = values[len(existing) :]
        if extra:
            if section is (self.sections[-1] if self.sections else None):
                self._terminate_last_line()
            at = self._insert_point(section, existing[: len(values)])
            for offset, value in enumerate(extra):
                section.body.insert(at + offset, self.new_pair(canonical, value))

    @staticmethod
    def _insert_point(section: Section, same_key: list[int]) -> int:
        if same_key:
            return same_key[-1] + 1
        last_pair = -1
        for i, line in enumerate(section.body):
            if line.kind == PAIR:
                last_pair = i
        if last_pair >= 0:
            return last_pair + 1
        return 0

    def append_section(
        self, name: str, pairs: list[tuple[str, str]], comments: list[str] = ()
    ) -> Section:
        """Add a section at the end of the file, separated from what is above by a blank line."""
        nl = self.newline
        self._terminate_last_line()
        last = self.sections[-1] if self.sections else self.preamble
        tail = list(last.lines())
        if tail and tail[-1].kind != BLANK:
            last.body.append(Line(nl, BLANK))
        for comment in comments:
            last.body.append(Line(f"# {comment}{nl}", COMMENT))
        header = Line(f"[{name}]{nl}", SECTION, name)
        section = Section(header, [self.new_pair(k, v) for k, v in pairs])
        self.sections.append(section)
        return section

    def remove_section(self, section: Section) -> None:
        """Delete a section together with the comment block glued above its header, but leave the
        comment block glued to the following header where it is."""
        index = self.sections.index(section)
        previous = self.sections[index - 1] if index > 0 else self.preamble
        glued_above = previous.leading_comment_count()
        if glued_above:
            del previous.body[-glued_above:]
        is_last = index + 1 == len(self.sections)
        keep = 0 if is_last else section.leading_comment_count()
        kept = section.body[len(section.body) - keep :] if keep else []
        del self.sections[index]
        if kept:
            # The next peer's comment block now sits at the end of the previous section.
            previous.body.extend(kept)
        elif is_last:
            # The blank lines that separated the removed last section from the one above were
            # there for it; the file ends the way it ended before.
            own_trailing = _trailing_blanks(section.body)
            while _trailing_blanks(previous.body) > own_trailing:
                previous.body.pop()


def _trailing_blanks(lines: list[Line]) -> int:
    n = 0
    for line in reversed(lines):
        if line.kind != BLANK:
            break
        n += 1
    return n
