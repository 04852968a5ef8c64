"""Properties of the config model and its lossless editor."""

from __future__ import annotations

import difflib
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.config import ConfigError, ConfigFile
from tether.config.document import BLANK, COMMENT, PAIR, SECTION, classify
from tether.config.model import parse_bytes, parse_text, render

from .strategies import configs, endpoints, key_bytes, messy_files, networks, peers_strategy

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(configs)
def test_model_text_model_is_identity(config):
    _, again = parse_text(render(config))
    assert again == config


@SETTINGS
@given(configs, st.sampled_from(["\n", "\r\n"]))
def test_render_parse_render_is_stable(config, nl):
    text = render(config, nl)
    _, again = parse_text(text)
    assert render(again, nl) == text


@SETTINGS
@given(messy_files())
def test_messy_formatting_parses_to_the_same_model_and_text_is_kept(case):
    text, config = case
    cfg = ConfigFile.parse(text)
    assert cfg.config == config
    assert cfg.text() == text  # the document gives the file back byte for byte


def _lines(text: str) -> list[str]:
    return text.lstrip("\ufeff").splitlines(keepends=True)


def _changes(before: str, after: str):
    a, b = _lines(before), _lines(after)
    ops = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    removed = [
        a[i] for tag, i1, i2, _, _ in ops if tag in ("replace", "delete") for i in range(i1, i2)
    ]
    added = [
        b[j] for tag, _, _, j1, j2 in ops if tag in ("replace", "insert") for j in range(j1, j2)
    ]
    return removed, added


def _key_of(raw: str) -> str | None:
    line = classify(raw, 1, "x")
    return line.key.lower() if line.kind == PAIR else None


def _same_line(a: str, b: str) -> bool:
    return a.rstrip("\r\n") == b.rstrip("\r\n")


edits = st.one_of(
    st.tuples(st.just("listen_port"), st.integers(0, 65535)),
    st.tuples(st.just("private_key"), key_bytes),
    st.tuples(st.just("endpoint"), st.none() | endpoints),
    st.tuples(st.just("allowed_ips"), st.lists(networks, max_size=3)),
    st.tuples(st.just("persistent_keepalive"), st.integers(0, 65535)),
    st.tuples(st.just("preshared_key"), st.none() | key_bytes),
    st.tuples(st.just("add_peer"), peers_strategy(1)),
    st.tuples(st.just("remove_peer"), st.integers(0, 10)),
)

FIELD_KEYS = {
    "listen_port": "listenport",
    "private_key": "privatekey",
    "endpoint": "endpoint",
    "allowed_ips": "allowedips",
    "persistent_keepalive": "persistentkeepalive",
    "preshared_key": "presharedkey",
}


def _apply(cfg: ConfigFile, edit, which: int):
    """Make one edit; returns what was edited (the removed peer for remove_peer), None when the
    edit does not apply to this file (no peers, a peer that is there already)."""
    kind, arg = edit
    peers = cfg.config.peers
    if kind in ("listen_port", "private_key"):
        return cfg.update_interface(**{kind: arg})
    if kind == "add_peer":
        if not arg or cfg.peer(arg[0].public_key):
            return None
        cfg.add_peer(arg[0], comment="added")
        return arg[0]
    if not peers:
        return None
    if kind == "remove_peer":
        victim = peers[arg % len(peers)]
        assert cfg.remove_peer(victim.public_key)
        return victim
    return cfg.update_peer(peers[which % len(peers)].public_key, **{kind: arg})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messy_files(), edits, st.integers(0, 10))
def test_an_edit_touches_only_its_own_lines(case, edit, which):
    text, _ = case
    cfg = ConfigFile.parse(text)
    kind, _arg = edit
    victim = _apply(cfg, edit, which)
    if victim is None:
        return
    if kind == "remove_peer":
        victim_lines = _section_lines(text, victim.line)

    after = cfg.text()
    # the in-memory model is exactly what the written text says
    assert parse_text(after)[1] == cfg.config
    removed, added = _changes(text, after)
    if kind == "add_peer":
        assert _lines(after)[: len(_lines(text))][:-1] == _lines(text)[:-1]
        new_lines = [r for r in added if not any(_same_line(r, old) for old in removed)]
        assert all(
            _key_of(r) is not None or r.strip() in ("", "[Peer]", "# added") for r in new_lines
        )
    elif kind == "remove_peer":
        assert not added or all(_same_line(a, r) for a, r in zip(added, removed, strict=False))
        for raw in removed:
            kind_ = classify(raw, 1, "x").kind
            assert kind_ in (BLANK, COMMENT) or raw in victim_lines
    else:
        key = FIELD_KEYS[kind]
        for raw in removed + added:
            if _key_of(raw) != key:
                # only a missing final newline may be added to an untouched last line
                assert any(_same_line(raw, other) for other in removed + added if other is not raw)


def _section_lines(text: str, header_lineno: int) -> list[str]:
    lines = _lines(text)
    out = [lines[header_lineno - 1]]
    for raw in lines[header_lineno:]:
        if raw.strip().startswith("[") and classify(raw, 1, "x").kind != PAIR:
            break
        out.append(raw)
    return out


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_parse_or_raise_config_error(data):
    try:
        parse_bytes(data, "fuzz.conf")
    except ConfigError as e:
        assert str(e).startswith("fuzz.conf")


CONFIG_ALPHABET = string.ascii_letters + string.digits + "[]=#,.:/+ \t\r\n\ufeff%-_"


@settings(max_examples=500, deadline=None)
@given(st.text(CONFIG_ALPHABET, max_size=300))
def test_arbitrary_text_parse_or_raise_config_error(text):
    try:
        parse_text(text, "fuzz.conf")
    except ConfigError:
        pass


@settings(max_examples=300, deadline=None)
@given(messy_files(), st.integers(0, 10_000), st.text(CONFIG_ALPHABET, min_size=1, max_size=20))
def test_mutated_valid_files_parse_or_raise_config_error(case, at, junk):
    text, _ = case
    at %= len(text) + 1
    try:
        parse_text(text[:at] + junk + text[at:], "m.conf")
    except ConfigError as e:
        assert e.line is None or e.line >= 1


def _exit_block(text: str) -> list[str]:
    """The [Exit] section's header and lines up to its last Key = Value line (a comment block
    after that is glued to the next header and travels with that peer)."""
    lines = _lines(text)
    start = next(
        (i for i, raw in enumerate(lines) if raw.strip().lower().startswith("[exit")), None
    )
    if start is None:
        return []
    end = start + 1
    for i in range(start + 1, len(lines)):
        line = classify(lines[i], i + 1, "x")
        if line.kind == SECTION:
            break
        if line.kind == PAIR:
            end = i + 1
    return [raw.rstrip("\r\n") for raw in lines[start:end]]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messy_files(), edits, st.integers(0, 10))
def test_edits_keep_the_exit_section_byte_for_byte(case, edit, which):
    text, _ = case
    cfg = ConfigFile.parse(text)
    before_exit = cfg.config.exit
    _apply(cfg, edit, which)
    after = cfg.text()
    assert _exit_block(after) == _exit_block(text)
    assert parse_text(after)[1].exit == before_exit
