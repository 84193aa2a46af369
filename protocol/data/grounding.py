"""Attribute grounding: take an attribute only from a mention that refers to the item.

Lexicons, cue phrases and category words live in `attribute_schema.yaml`. A
mention counts when it is
- in the title or a description sentence, before any contamination cue
  ("Pairs well with our denim shorts." says nothing about the tee),
- not negated ("no hood", "collar-less"; "without sleeves" states sleeveless),
- not attached to another garment or an accessory ("our denim shorts",
  "a leather belt", "shorts in denim"), and for material/colour not attached to a
  part ("white stripes", "leather trim").
The title wins over the description, then the earliest mention. Source labels
(`src_*` columns) fill in where the text is silent; items filed under `graphic`
get pattern `graphic` last (graphic policy).
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from collections.abc import Mapping

import numpy as np
import pandas as pd

from protocol.data.attribute_schema import TOKEN, AttributeSchema, load_attribute_schema, phrase_key
from protocol.data.graphic_policy import pattern_for_category
from protocol.data.schema import ATTRIBUTES, UNKNOWN

UNMAPPED_CATEGORY1 = "other"

# Words that end the phrase an attribute word can attach to ("cotton and linen shirt").
_STOP_WORDS = frozenset("with and or for in on to from by under over at that which is are this it".split())
_PREPOSITIONS = frozenset(("in", "of", "from"))
_WINDOW = 3  # words looked at on either side of a mention
_CLAUSE_BREAK = re.compile(r"[,;:()/]")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+|;\s*")
_TAG = re.compile(r"<[^>]+>")
# C0 and C1 control characters and DEL, but not tab, newline and carriage return.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACE = re.compile(r"\s+")


# ---------------------------------------------------------------- text


def remove_control_characters(value: str) -> str:
    """`value` without NUL and the other control characters (tab, newline and CR stay)."""
    return CONTROL_CHARACTERS.sub("", value)


def clean_text(value: object) -> str:
    """Plain one-line text: HTML tags and entities removed, Unicode normalised, control characters
    removed, spaces collapsed."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = unicodedata.normalize("NFKC", html.unescape(_TAG.sub(" ", str(value))))
    return _SPACE.sub(" ", remove_control_characters(text)).strip()


def build_text(title: object, description: object) -> str:
    """The text that is embedded: cleaned title, a full stop, cleaned description."""
    title, description = clean_text(title), clean_text(description)
    if title and description and title[-1] not in ".!?":
        title += "."
    return f"{title} {description}".strip()


def map_category(raw: object, schema: AttributeSchema | None = None,
                 fallback_category1: object = None) -> tuple[str, str]:
    """(category1, category2) for a source category: synonyms map to the schema's categories.

    An exact synonym wins, else the longest synonym inside the string ("Coats & Jackets").
    A category the schema does not know is kept as the source has it (lower case), with
    category1 from `fallback_category1` or "other"; an empty one is `unknown`.
    """
    schema = schema or load_attribute_schema()
    text = clean_text(raw).lower()
    name = schema.category_by_key.get(phrase_key(text)) if text else None
    if name is None and text:
        matches = [m.group(0) for m in schema.category_pattern.finditer(text)]
        if matches:
            name = schema.category_by_key[phrase_key(max(matches, key=len))]
    if name is not None:
        return schema.categories[name].category1, name
    category1 = clean_text(fallback_category1).lower() or UNMAPPED_CATEGORY1
    return category1, text or UNKNOWN


def map_label(attribute: str, label: object, schema: AttributeSchema | None = None) -> str:
    """A source label ("Stripe", "Dark Blue") in the schema's vocabulary, or `unknown`."""
    schema = schema or load_attribute_schema()
    text = clean_text(label).lower()
    if not text:
        return UNKNOWN
    by_key = schema.value_by_key[attribute]
    if phrase_key(text) in by_key:
        return by_key[phrase_key(text)]
    matches = [m.group(0) for m in schema.value_patterns[attribute].finditer(text)]
    return by_key[phrase_key(max(matches, key=len))] if matches else UNKNOWN


# ---------------------------------------------------------------- grounding


def _sentences(title: str, description: str) -> list[str]:
    """The title, then the description's sentences: the order in which mentions are preferred."""
    return ([title] if title else []) + [s.strip() for s in _SENTENCE_BREAK.split(description) if s and s.strip()]


def _own_scope(sentence_lower: str, schema: AttributeSchema) -> str:
    """The part of a sentence before its first contamination cue."""
    cue = schema.cue_pattern.search(sentence_lower)
    return sentence_lower if cue is None else sentence_lower[: cue.start()]


def _noun_kind(tokens: list[str], i: int, schema: AttributeSchema) -> str | None:
    """Kind of the longest noun starting at tokens[i], if any."""
    for n in range(min(schema.max_noun_words, len(tokens) - i), 0, -1):
        kind = schema.noun_kinds.get("".join(tokens[i:i + n]))
        if kind is not None:
            return kind
    return None


def _attachment(kind: str | None, attribute: str, own: frozenset[str] | None, schema: AttributeSchema) -> bool | None:
    """True: the word names the item; False: something else; None: no decision, look further."""
    if kind is None:
        return None
    if kind.startswith("category:"):
        return own is None or kind.removeprefix("category:") in own
    if kind == "accessory":
        return False
    if kind == "detail":
        return False if attribute in schema.detail_attributes else None
    return True  # generic noun


def _refers_to_item(scope: str, start: int, end: int, attribute: str, own: frozenset[str] | None,
                    schema: AttributeSchema) -> bool:
    clause_start = max((m.end() for m in _CLAUSE_BREAK.finditer(scope, 0, start)), default=0)
    clause_end_match = _CLAUSE_BREAK.search(scope, end)
    clause_end = clause_end_match.start() if clause_end_match else len(scope)
    before = TOKEN.findall(scope[clause_start:start])
    after = TOKEN.findall(scope[end:clause_end])

    if schema.negation_words & set(before[-2:]) or (after and after[0] in schema.negation_suffixes):
        return False
    # Forward: "denim shorts", "leather belt", "white stripes".
    for i in range(min(_WINDOW + 1, len(after))):
        if after[i] in _STOP_WORDS:
            break
        decision = _attachment(_noun_kind(after, i, schema), attribute, own, schema)
        if decision is not None:
            return decision
    # Backward through a preposition: "shorts in denim", "a tee made of cotton".
    for p in range(len(before) - 1, max(-1, len(before) - 1 - _WINDOW), -1):
        if before[p] in _PREPOSITIONS:
            head = before[max(0, p - _WINDOW):p]
            for i in range(len(head) - 1, -1, -1):
                decision = _attachment(_noun_kind(head, i, schema), attribute, own, schema)
                if decision is not None:
                    return decision
            break
    return True


def _text_mentions(title: str, description: str, category2: str,
                   schema: AttributeSchema) -> dict[str, tuple[str, str]]:
    own = schema.own_categories(category2)
    found: dict[str, tuple[str, str]] = {}
    for sentence in _sentences(title, description):
        scope = _own_scope(sentence.lower(), schema)
        for attribute in ATTRIBUTES:
            if attribute in found:
                continue
            for m in schema.value_patterns[attribute].finditer(scope):
                if _refers_to_item(scope, m.start(), m.end(), attribute, own, schema):
                    found[attribute] = (schema.value_by_key[attribute][phrase_key(m.group(0))], sentence)
                    break
    return found


def ground_attributes_with_evidence(
    title: object, description: object, category2: object, schema: AttributeSchema | None = None,
    source_labels: Mapping[str, object] | None = None,
) -> dict[str, tuple[str, str]]:
    """attribute -> (value, evidence): the sentence the value came from, the source label, or ''."""
    schema = schema or load_attribute_schema()
    category2 = clean_text(category2).lower()
    found = _text_mentions(clean_text(title), clean_text(description), category2, schema)
    out: dict[str, tuple[str, str]] = {}
    for attribute in ATTRIBUTES:
        if attribute in found:
            out[attribute] = found[attribute]
            continue
        label = (source_labels or {}).get(attribute)
        value = map_label(attribute, label, schema)
        evidence = f"source label {attribute}={clean_text(label)!r}" if value != UNKNOWN else ""
        out[attribute] = (value, evidence)
    pattern = pattern_for_category(category2, out["pattern"][0])
    if pattern != out["pattern"][0]:
        out["pattern"] = (pattern, f"category2={category2}")
    return out


def ground_attributes(
    title: object, description: object, category2: object, schema: AttributeSchema | None = None,
    source_labels: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """attribute -> value (`unknown` where nothing refers to the item)."""
    evidence = ground_attributes_with_evidence(title, description, category2, schema, source_labels)
    return {attribute: value for attribute, (value, _) in evidence.items()}


def ground_category(text: object, schema: AttributeSchema | None = None) -> str:
    """The category2 a text names (`unknown` where none): the first category noun, sentence by sentence,
    before any contamination cue. "Denim Bermuda Shorts. Pairs well with our tees." -> shorts.

    What a query grounds its garment type with: a query carries no category column, only its text.
    """
    schema = schema or load_attribute_schema()
    for sentence in _sentences("", clean_text(text)):
        match = schema.category_pattern.search(_own_scope(sentence.lower(), schema))
        if match is not None:
            return schema.category_by_key[phrase_key(match.group(0))]
    return UNKNOWN


# ---------------------------------------------------------------- report


def _ratio(hits: np.ndarray, where: np.ndarray) -> float | None:
    n = int(where.sum())
    return float(hits[where].sum() / n) if n else None


def grounding_report(df: pd.DataFrame) -> dict[str, dict]:
    """Per attribute with a gt_* column: precision, recall and coverage of the grounded values.

    precision: correct / items where something was extracted (gt unknown counts as wrong);
    recall: correct / items whose gt is known; coverage: extracted / all items.
    `by_value` gives the same per true/extracted value.
    """
    report: dict[str, dict] = {}
    for attribute in ATTRIBUTES:
        gt_column = f"gt_{attribute}"
        if gt_column not in df.columns:
            continue
        if attribute not in df.columns:
            raise KeyError(f"grounding_report: column {attribute!r} is missing (have {gt_column!r}); ground first")
        pred = df[attribute].fillna(UNKNOWN).astype(str).to_numpy()
        gt = df[gt_column].fillna(UNKNOWN).astype(str).to_numpy()
        extracted, known, correct = pred != UNKNOWN, gt != UNKNOWN, (pred == gt) & (pred != UNKNOWN)
        by_value = {}
        for value in sorted(set(pred[extracted]) | set(gt[known])):
            by_value[value] = {"precision": _ratio(correct, pred == value), "recall": _ratio(correct, gt == value),
                               "n_extracted": int((pred == value).sum()), "n_gt": int((gt == value).sum())}
        report[attribute] = {
            "precision": _ratio(correct, extracted), "recall": _ratio(correct, known),
            "coverage": float(extracted.mean()) if len(df) else None,
            "n_items": int(len(df)), "n_extracted": int(extracted.sum()), "n_gt_known": int(known.sum()),
            "n_correct": int(correct.sum()), "by_value": by_value,
        }
    return report
