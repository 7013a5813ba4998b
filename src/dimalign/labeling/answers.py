"""Validation of a participant's answer for one dimension: labels, kind and interpretability.

:func:`validate_answer` checks what a participant submits against the
study's :class:`~dimalign.labeling.study.QuestionSet` and returns an
:class:`Answer` with cleaned labels, or raises :class:`AnswerError` naming
every invalid form field. :func:`remove_format_characters` is the cleaning
step that the label analyses also apply to stored labels.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # For annotations only, because dimalign.labeling.study imports this module.
    from dimalign.labeling.study import QuestionSet

#: Unicode categories rejected anywhere in a label: control characters
#: (``Cc``, such as line feed and NEL U+0085), line and paragraph separators
#: (``Zl`` U+2028, ``Zp`` U+2029) and surrogates (``Cs``), which cannot be
#: encoded as UTF-8. Private-use characters (``Co``) show differently in
#: every font, and unassigned code points (``Cn``) show as boxes. ``Cn``
#: follows the Unicode version of Python's ``unicodedata``, so a character
#: assigned in a later Unicode version is rejected too.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs", "Co", "Cn"})

#: The characters with Unicode's Bidi_Control property: the Arabic letter
#: mark U+061C, the marks U+200E-U+200F, embeddings and overrides
#: U+202A-U+202E and isolates U+2066-U+2069. They reverse or reorder the text
#: shown after them, in the admin page and in exported files too.
_BIDI_CONTROLS = frozenset(
    chr(code) for code in [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
)

#: Categories of visible base characters: letters, numbers, punctuation and symbols.
_VISIBLE_CATEGORY_GROUPS = ("L", "N", "P", "S")

#: Letters and symbols that draw nothing: the Hangul fillers U+115F, U+1160,
#: U+3164 and U+FFA0, and the blank Braille pattern U+2800.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


class AnswerError(ValueError):
    """An answer that fails validation.

    Attributes:
        errors (dict[str, str]): Message per form field (``labels``, ``kind``,
            ``interpretability``).
    """

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class Answer:
    """One participant's answer for one dimension.

    Attributes:
        labels (tuple[str, ...]): 1 to ``max_labels`` trimmed labels, in the order typed.
        kind (str): One of the question set's kinds.
        interpretability (str): One of the question set's interpretability values.
    """

    labels: tuple[str, ...]
    kind: str
    interpretability: str


def remove_format_characters(text: str) -> str:
    """Remove the Unicode format characters (category ``Cf``) from a label.

    Format characters such as the zero-width space U+200B, the byte order
    mark U+FEFF, the soft hyphen U+00AD and the word joiner U+2060 draw
    nothing, so ``red`` with and without them look the same but would be
    counted as different labels. The zero-width non-joiner U+200C and joiner
    U+200D stay where they sit between two visible characters: there they
    shape Persian and Indic words and build emoji sequences. At the ends of
    a word they draw nothing and are removed.

    >>> remove_format_characters("re\u00add\u200b")
    'red'
    """
    def visible(position: int) -> bool:
        if not 0 <= position < len(text):
            return False
        character = text[position]
        return not character.isspace() and unicodedata.category(character) != "Cf"

    return "".join(
        character for position, character in enumerate(text)
        if unicodedata.category(character) != "Cf"
        or (character in _JOINERS and visible(position - 1) and visible(position + 1))
    )


# Zero-width non-joiner and joiner.
_JOINERS = frozenset("\u200c\u200d")


def validate_answer(
    questions: QuestionSet, labels: Sequence[str], kind: str | None, interpretability: str | None
) -> Answer:
    """Check a submitted answer and return it with trimmed, NFC-normalised labels.

    Empty label fields are ignored. Each remaining label is trimmed of
    surrounding whitespace, brought to Unicode normal form NFC (so that
    ``café`` typed with a combining accent and with ``é`` is the same label),
    stripped of invisible format characters (see
    :func:`remove_format_characters`) and otherwise stored as typed,
    including HTML or SQL characters (the templates escape them and the
    queries bind them). Bidirectional controls are format characters too,
    but a label with them is rejected rather than changed.

    Raises:
        AnswerError: Naming every invalid field: no label, more than
            ``max_labels`` labels, a trimmed label longer than
            ``max_label_length`` UTF-16 code units as submitted (see
            :func:`text_field_length`), a label with control characters, line or paragraph
            separators, bidirectional controls, private-use, unassigned or
            noncharacter code points, a label without a visible letter,
            digit, punctuation mark or symbol (such as only the zero-width
            space U+200B, a Hangul filler or combining marks), or a rating
            outside the allowed values.
    """
    errors: dict[str, str] = {}
    trimmed = [label.strip() for label in labels if label and label.strip()]
    typed = [unicodedata.normalize("NFC", label) for label in trimmed]
    # A label of format characters only becomes empty here and fails the
    # visibility check below, instead of being ignored like an empty field.
    # NFC runs again because a removed character, such as a soft hyphen
    # between "e" and U+0301, had kept the accent from composing.
    cleaned = [unicodedata.normalize("NFC", remove_format_characters(label).strip()) for label in typed]
    if not cleaned:
        errors["labels"] = "enter at least one label"
    elif len(cleaned) > questions.max_labels:
        errors["labels"] = f"enter at most {questions.max_labels} labels, got {len(cleaned)}"
    else:
        too_long = [label for label in trimmed if text_field_length(label) > questions.max_label_length]
        if too_long:
            errors["labels"] = (
                f"each label may have at most {questions.max_label_length} characters as the text field "
                f"counts them (an emoji counts as 2); {len(too_long)} label(s) are longer"
            )
        elif any(_has_forbidden_character(label) for label in typed):
            errors["labels"] = (
                "labels must not contain control characters (such as line breaks), text-direction "
                "controls, private-use, unassigned or noncharacter code points"
            )
        elif not all(_has_visible_character(label) for label in cleaned):
            errors["labels"] = (
                "each label must contain visible characters: at least one letter, digit, punctuation "
                "mark or symbol"
            )
    if kind not in questions.kind_values:
        errors["kind"] = f"choose one of: {', '.join(questions.kind_values)}"
    if interpretability not in questions.interpretability_values:
        errors["interpretability"] = f"choose one of: {', '.join(questions.interpretability_values)}"
    if errors:
        raise AnswerError(errors)
    return Answer(labels=tuple(cleaned), kind=str(kind), interpretability=str(interpretability))


def text_field_length(text: str) -> int:
    """Count the UTF-16 code units of ``text``, as the ``maxlength`` of an HTML text field does.

    The HTML standard measures ``maxlength`` in UTF-16 code units of the
    value as typed, so a character outside the Basic Multilingual Plane,
    such as most emoji, counts as 2. Counting the same units on the server,
    before NFC (which turns U+0958 into the two code points U+0915 U+093C),
    accepts every label that the field lets through.

    >>> text_field_length("ok\U0001F600")
    4
    """
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _has_forbidden_character(label: str) -> bool:
    return any(
        unicodedata.category(character) in _FORBIDDEN_CATEGORIES
        or character in _BIDI_CONTROLS
        or _is_noncharacter(character)
        for character in label
    )


def _is_noncharacter(character: str) -> bool:
    # Unicode reserves U+FDD0-U+FDEF and the last two code points of every
    # plane (U+xFFFE, U+xFFFF) as noncharacters, never to be assigned.
    code = ord(character)
    return 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE


def _has_visible_character(label: str) -> bool:
    # Combining marks (M*), variation selectors such as U+FE0F and the
    # combining grapheme joiner U+034F draw nothing without a base character.
    return any(
        unicodedata.category(character)[0] in _VISIBLE_CATEGORY_GROUPS and character not in _BLANK_LETTERS
        for character in label
    )
