"""Red team: the secret registry of a large fleet. `serve` with 500 merchants registers
over a thousand secrets; registering one more must not rebuild a pattern of all of them
(start-up was quadratic: about a minute), and a log line must not be searched for every
form of every secret. Masking stays what it was: every form of every secret, any case."""

from __future__ import annotations

import re
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync import redaction

_ASCII = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="*"))


def _secret(i: int) -> str:
    return f"fleet-secret-{i:05d}-Zq9"


def test_registering_a_fleets_secrets_compiles_no_pattern_of_all_of_them() -> None:
    r = redaction.Redactor()
    compiled: list[str] = []
    real = re.compile

    def counting(pattern: str, flags: int = 0) -> re.Pattern[str]:
        compiled.append(pattern)
        return real(pattern, flags)

    with mock.patch("re.compile", counting):  # the registry compiles through re
        for i in range(600):
            r.register(_secret(i))
        assert compiled == [], "a registration recompiled the masking pattern"
        assert r.redact(f"token {_secret(321)} refused") == "token *** refused"
        assert r.redact(f"nothing here but {_secret(321)[:-1]}") == (
            f"nothing here but {_secret(321)[:-1]}"
        )
    # the one pattern made masks the forms that text held, not the fleet's
    assert len(compiled) == 1 and _secret(320) not in compiled[0]


@settings(max_examples=40, deadline=None)
@given(
    secrets=st.lists(_ASCII.filter(lambda s: len(s) >= 8), min_size=1, max_size=40, unique=True),
    pick=st.integers(min_value=0),
    prefix=_ASCII.filter(lambda s: len(s) <= 40),
    suffix=_ASCII.filter(lambda s: len(s) <= 40),
    upper=st.booleans(),
)
def test_many_secrets_mask_exactly_what_one_pattern_of_every_form_masks(
    secrets: list[str], pick: int, prefix: str, suffix: str, upper: bool
) -> None:
    """Past a few secrets the registry files forms by their first characters and scans a
    text in pieces: what it masks is what the single pattern of every form masked, across
    piece boundaries too (pieces of 16 characters here)."""
    r = redaction.Redactor()
    every: set[str] = set()
    for s in secrets:
        r.register(s)
        every |= redaction.variants_of(s)
    ordered = sorted(every, key=lambda v: (-len(v), v))
    reference = re.compile("|".join(re.escape(v) for v in ordered), re.IGNORECASE)
    chosen = secrets[pick % len(secrets)]
    form = sorted(redaction.variants_of(chosen))[pick % len(redaction.variants_of(chosen))]
    text = prefix + (form.upper() if upper else form) + suffix + prefix
    with mock.patch.object(redaction, "_CHUNK", 16):
        assert r.contains_secret(text)
        assert r.redact(text) == reference.sub(redaction.REDACTED, text)
        assert chosen not in r.redact(text)


def test_an_evicted_token_is_no_longer_masked_and_a_kept_one_still_is() -> None:
    r = redaction.Redactor()
    for i in range(100):  # configured: the indexed registry
        r.register(_secret(i))
    tokens = [f"access-token-{i:04d}-abcdef" for i in range(redaction.MAX_TRANSIENT + 3)]
    for token in tokens:
        r.register(token, transient=True)
    assert r.redact(tokens[0]) == tokens[0]  # dropped: no longer live
    assert r.redact(tokens[-1]) == redaction.REDACTED
    assert r.redact(_secret(7)) == redaction.REDACTED
    r.register(tokens[-1])  # a token configured later stays for good
    for i in range(redaction.MAX_TRANSIENT + 1):
        r.register(f"later-token-{i:04d}-xyz", transient=True)
    assert r.redact(tokens[-1]) == redaction.REDACTED
