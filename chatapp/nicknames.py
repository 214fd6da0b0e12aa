"""Safe nicknames: what makes two nicknames one (UTS #39 skeletons) and which are refused.

All Unicode data here comes from ICU, through PyICU as the ``pyicu-wheels`` wheel (pinned in
setup.py), which bundles ICU 77.1: **Unicode 16.0** for the confusables table, the scripts,
the normalisation and the character properties alike. Python's own ``unicodedata`` (Unicode
14.0 on Python 3.11, 15.0 on 3.12) is not used for keys, so one version computes every key
stored in MongoDB whatever Python runs the app. ``UNICODE_VERSION`` says which; a change of
it (a new wheel) may change some keys: see "Migration" in docs/API.md.

The keys (both compared, both unique, see ``keys``):

- ``skeleton``: UTS #39 ``skeleton(NFKC_Casefold(nick))``, ICU's ``getSkeleton`` (NFD, the
  confusables mapping, NFD again), casefolded once more because some prototypes are
  capitals (``0`` -> ``O``) and must meet the lowercase letter they look like (``o``).
- ``cased``: ``NFKC_Casefold(skeleton(NFKC(nick)))``: the same, but the skeleton is taken
  before case folding. The trap it closes: folding first turns Greek capitals into Greek
  small letters, so "ΑΝΝ" (Greek) would get the skeleton of "ανν" ("avv") and sit beside
  "ANN", which it looks exactly like. Skeleton first, "ΑΝΝ" is "ANN" is "ann".

Refused (``400 bad_nick``), each with its own message:

- unassigned code points (their script and look are unknown);
- default-ignorable code points (variation selectors, the combining grapheme joiner, Hangul
  fillers, zero-width characters, ...) and bidirectional controls: they render as nothing,
  so "anna" + U+FE05 would look exactly like "anna";
- a name that is not "Highly Restrictive" (UTS #39 §5.2): one script, or Latin with Han and
  Hiragana/Katakana, Han and Bopomofo, or Han and Hangul; Common and Inherited characters
  (digits, ``_ - .``, combining marks) go with any. "аnn" (Cyrillic а) mixes two scripts;
- digits of two number systems ("1" and Arabic-Indic "١");
- a name without one visible letter or digit.
"""

from __future__ import annotations

from dataclasses import dataclass

import icu

from chatapp.errors import ChatError

UNICODE_VERSION = icu.UNICODE_VERSION
ICU_VERSION = icu.ICU_VERSION

_NFKC_CF = icu.Normalizer2.getNFKCCasefoldInstance()
_NFKC = icu.Normalizer2.getNFKCInstance()


def _spoof_checker() -> icu.SpoofChecker:
    checker = icu.SpoofChecker()
    # Stated, not left to ICU's defaults (which are these today).
    checker.setRestrictionLevel(icu.URestrictionLevel.HIGHLY_RESTRICTIVE)
    checker.setChecks(icu.USpoofChecks.RESTRICTION_LEVEL | icu.USpoofChecks.MIXED_NUMBERS)
    return checker


# One checker, used on the event loop's thread only (ICU's checker is not for sharing
# between threads while being configured; ``check`` and ``getSkeleton`` only read it).
_CHECKER = _spoof_checker()


@dataclass(frozen=True)
class NickKeys:
    """What uniqueness compares: two nicknames are one if either key is equal."""

    skeleton: str
    cased: str


def keys(nick: str) -> NickKeys:
    folded = _NFKC_CF.normalize(nick)
    skeleton = _NFKC_CF.normalize(_CHECKER.getSkeleton(0, folded))
    cased = _NFKC_CF.normalize(_CHECKER.getSkeleton(0, _NFKC.normalize(nick)))
    return NickKeys(skeleton, cased)


def skeleton(nick: str) -> str:
    return keys(nick).skeleton


def _name(ch: str) -> str:
    return f"U+{ord(ch):04X} {icu.Char.charName(ch) or 'unnamed'}"


def check_safe(nick: str) -> None:
    """Raise ``bad_nick`` for a nickname that could pass for another or show as nothing."""
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in nick):
        # (A JSON body can carry one; ICU and MongoDB cannot.)
        raise ChatError("bad_nick", "The nickname contains a lone surrogate.", 400)
    for ch in nick:
        if icu.Char.charType(ch) == icu.UCharCategory.UNASSIGNED:
            raise ChatError(
                "bad_nick", f"Nicknames cannot contain unassigned code points (U+{ord(ch):04X}).",
                400,
            )
        if icu.Char.hasBinaryProperty(ch, icu.UProperty.BIDI_CONTROL):
            raise ChatError(
                "bad_nick",
                f"Nicknames cannot contain bidirectional controls ({_name(ch)}).", 400,
            )
        if icu.Char.hasBinaryProperty(ch, icu.UProperty.DEFAULT_IGNORABLE_CODE_POINT):
            raise ChatError(
                "bad_nick",
                f"Nicknames cannot contain invisible characters ({_name(ch)}).", 400,
            )
    if not any(icu.Char.isalnum(ch) for ch in nick):
        raise ChatError("bad_nick", "A nickname needs at least one letter or digit.", 400)
    folded = _NFKC_CF.normalize(nick)
    result = _CHECKER.check(folded)
    if result & icu.USpoofChecks.MIXED_NUMBERS:
        raise ChatError(
            "bad_nick", "Nicknames cannot mix digits of different number systems.", 400
        )
    if result & icu.USpoofChecks.RESTRICTION_LEVEL:
        scripts = sorted(_scripts(folded))
        raise ChatError(
            "bad_nick",
            "Nicknames must be written in one script (Latin may go with Chinese, Japanese "
            f"or Korean): this one mixes {' and '.join(scripts)}.",
            400,
        )


def _scripts(text: str) -> set[str]:
    names = {icu.Script.getScript(ch).getName() for ch in text}
    return names - {"Common", "Inherited"}
