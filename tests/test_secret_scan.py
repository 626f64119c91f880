"""The snapshot secret check (`Redactor.contains_secret_in`, ingest's hot path) lowers
bytes instead of decoding them; it must answer exactly as the text check does."""

import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync import redaction
from loopsync.redaction import Redactor

# Letters whose case or encoding matters: ASCII, the two that lower to ASCII, other
# non-ASCII letters, and what base64 and URL encoding write.
_TRICKY = 'aAkKiIsS09-_+/%\u0130\u212a\u00e9\u00c9\u03a3\u0131\u00df "\\'
# A secret is configuration text: no lone surrogate (configkit refuses one).
_SECRET = st.text(
    alphabet=st.sampled_from(_TRICKY) | st.characters(blacklist_categories=("Cs",)),
    min_size=8,
    max_size=14,
)


def _text_answer(redactor: Redactor, data: bytes) -> bool:
    """What the check answered before: the text, decoded, through `contains_secret`."""
    return redactor.contains_secret(data.decode("utf-8", "replace"))


def _recased(text: str, flips: list[bool]) -> str:
    return "".join(c.swapcase() if flips[i % len(flips)] else c for i, c in enumerate(text))


@settings(max_examples=150, deadline=None)
@given(
    secrets=st.lists(_SECRET, min_size=1, max_size=3),
    before=st.text(alphabet=st.sampled_from(_TRICKY) | st.characters(), max_size=20),
    after=st.text(alphabet=st.sampled_from(_TRICKY) | st.characters(), max_size=20),
    flips=st.lists(st.booleans(), min_size=1, max_size=5),
    which=st.integers(0, 2),
    junk=st.binary(max_size=6),
)
def test_bytes_check_answers_as_the_text_check_for_any_text_and_secret(
    secrets, before, after, flips, which, junk
):
    redactor = Redactor()
    for secret in secrets:
        redactor.register(secret)
    echoed = _recased(secrets[which % len(secrets)], flips)
    for text in (before + echoed + after, before + after, echoed.upper(), echoed.lower()):
        data = text.encode("utf-8", "surrogatepass")
        for sample in (data, data + junk, junk + data, data[: len(data) // 2] + junk):
            assert redactor.contains_secret_in(sample) == _text_answer(redactor, sample)


@settings(max_examples=100, deadline=None)
@given(secret=_SECRET, data=st.binary(max_size=40))
def test_bytes_check_answers_as_the_text_check_for_any_bytes(secret, data):
    redactor = Redactor()
    redactor.register(secret)
    assert redactor.contains_secret_in(data) == _text_answer(redactor, data)


def test_only_the_listed_characters_lower_to_ascii():
    """The bytes check's premise, against this Python's Unicode tables."""
    found = {
        chr(c).encode()
        for c in range(0x80, sys.maxunicode + 1)
        if not 0xD800 <= c <= 0xDFFF and any(ord(x) < 0x80 for x in chr(c).lower())
    }
    assert found == set(redaction._LOWERS_TO_ASCII)


def test_a_kelvin_sign_echo_of_a_secret_is_still_found():
    redactor = Redactor()
    redactor.register("sandbox-loop-key-0001")
    assert redactor.contains_secret_in('{"note":"SANDBOX-LOOP-\u212aEY-0001 é"}'.encode())
    assert not redactor.contains_secret_in('{"note":"sandbox-loop-kéy-0001"}'.encode())
