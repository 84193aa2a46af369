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

import functools
import html
import logging
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from protocol.data.graphic_policy import pattern_for_category
from protocol.data.schema import ATTRIBUTES, UNKNOWN

logger = logging.getLogger(__name__)

DEFAULT_SCHEMA_PATH = Path(__file__).with_name("attribute_schema.yaml")
UNMAPPED_CATEGORY1 = "other"

# Words that end the phrase an attribute word can attach to ("cotton and linen shirt").
_STOP_WORDS = frozenset("with and or for in on to from by under over at that which is are this it".split())
_PREPOSITIONS = frozenset(("in", "of", "from"))
_WINDOW = 3  # words looked at on either side of a mention
_TOKEN = re.compile(r"[a-z0-9]+")
_CLAUSE_BREAK = re.compile(r"[,;:()/]")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+|;\s*")
_TAG = re.compile(r"<[^>]+>")
# C0 and C1 control characters and DEL, but not tab, newline and carriage return.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACE = re.compile(r"\s+")


class AttributeSchemaError(ValueError):
    """attribute_schema.yaml is malformed; the message names the file and key."""


@dataclass(frozen=True)
class Category:
    name: str
    category1: str
    synonyms: tuple[str, ...]
    related: tuple[str, ...] = ()


@dataclass(frozen=True)
class AttributeSchema:
    path: Path
    values: dict[str, dict[str, tuple[str, ...]]]  # attribute -> value -> synonyms (incl. implied negations)
    categories: dict[str, Category]
    accessory_nouns: frozenset[str]
    generic_nouns: frozenset[str]
    detail_nouns: frozenset[str]
    detail_attributes: frozenset[str]
    contamination_cues: tuple[str, ...]
    negation_words: frozenset[str]
    negation_suffixes: frozenset[str]

    @functools.cached_property
    def value_patterns(self) -> dict[str, re.Pattern]:
        return {a: _alternation(s for syns in vals.values() for s in syns) for a, vals in self.values.items()}

    @functools.cached_property
    def value_by_key(self) -> dict[str, dict[str, str]]:
        """attribute -> normalised synonym -> value."""
        return {a: {_key(s): v for v, syns in vals.items() for s in syns} for a, vals in self.values.items()}

    @functools.cached_property
    def cue_pattern(self) -> re.Pattern:
        return _alternation(self.contamination_cues)

    @functools.cached_property
    def category_pattern(self) -> re.Pattern:
        return _alternation(s for c in self.categories.values() for s in c.synonyms)

    @functools.cached_property
    def category_by_key(self) -> dict[str, str]:
        return {_key(s): c.name for c in self.categories.values() for s in c.synonyms}

    @functools.cached_property
    def noun_kinds(self) -> dict[str, str]:
        """normalised noun -> 'category:<name>' | 'accessory' | 'generic' | 'detail'."""
        kinds = {_key(w): "detail" for w in self.detail_nouns}
        kinds |= {_key(w): "generic" for w in self.generic_nouns}
        kinds |= {_key(w): "accessory" for w in self.accessory_nouns}
        kinds |= {k: f"category:{c}" for k, c in self.category_by_key.items()}
        return kinds

    @functools.cached_property
    def max_noun_words(self) -> int:
        words = [*self.accessory_nouns, *self.generic_nouns, *self.detail_nouns,
                 *(s for c in self.categories.values() for s in c.synonyms)]
        return max(len(_TOKEN.findall(w)) for w in words)

    def own_categories(self, category2: str) -> frozenset[str] | None:
        """Categories whose nouns name this item; None when the item's category is not in the schema."""
        category = self.categories.get(category2)
        return None if category is None else frozenset((category.name, *category.related))


# ---------------------------------------------------------------- loading


def load_attribute_schema(path: str | Path | None = None) -> AttributeSchema:
    """Read and validate an attribute schema (default: the packaged attribute_schema.yaml)."""
    path = Path(path) if path is not None else DEFAULT_SCHEMA_PATH
    if not path.is_file():
        raise FileNotFoundError(f"attribute schema {path} does not exist")
    return _load_cached(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, _mtime_ns: int) -> AttributeSchema:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise AttributeSchemaError(f"{path}: not valid YAML ({e})") from e
    schema = _parse_schema(Path(path), doc)
    logger.debug("loaded attribute schema %s", path)
    return schema


def _parse_schema(path: Path, doc: object) -> AttributeSchema:
    def fail(key: str, what: str) -> AttributeSchemaError:
        return AttributeSchemaError(f"{path}: key {key!r} {what}")

    def words(obj: object, key: str) -> tuple[str, ...]:
        if not isinstance(obj, list) or not all(isinstance(w, str) and w.strip() for w in obj):
            raise fail(key, "must be a list of non-empty strings")
        return tuple(w.strip().lower() for w in obj)

    if not isinstance(doc, dict):
        raise AttributeSchemaError(f"{path}: expected a mapping at the top level")
    for key in ("attributes", "categories", "contamination_cues", "negation"):
        if key not in doc:
            raise fail(key, "is missing")
    attrs = doc["attributes"]
    if not isinstance(attrs, dict):
        raise fail("attributes", "must map attribute -> value -> synonyms")
    values: dict[str, dict[str, tuple[str, ...]]] = {}
    for attribute in ATTRIBUTES:
        lexicon = attrs.get(attribute)
        if not isinstance(lexicon, dict) or not lexicon:
            raise fail(f"attributes.{attribute}", "is missing or empty")
        values[attribute] = {
            str(v).lower(): (str(v).lower(), *words(s, f"attributes.{attribute}.{v}")) for v, s in lexicon.items()
        }

    negation = doc["negation"]
    if not isinstance(negation, dict):
        raise fail("negation", "must be a mapping with words, suffixes, implies")
    for i, item in enumerate(negation.get("implies") or []):
        key = f"negation.implies[{i}]"
        if not isinstance(item, dict) or not {"phrase", "attribute", "value"} <= item.keys():
            raise fail(key, "must have phrase, attribute and value")
        attribute, value = item["attribute"], str(item["value"]).lower()
        if attribute not in values or value not in values[attribute]:
            raise fail(key, f"names unknown {attribute}={value!r}")
        values[attribute][value] += (str(item["phrase"]).lower(),)

    for attribute, lexicon in values.items():
        seen: dict[str, str] = {}
        for value, synonyms in lexicon.items():
            for s in synonyms:
                other = seen.setdefault(_key(s), value)
                if other != value:
                    raise fail(f"attributes.{attribute}.{value}", f"repeats synonym {s!r} of value {other!r}")

    cats = doc["categories"]
    if not isinstance(cats, dict) or not cats:
        raise fail("categories", "must map category2 -> {category1, synonyms}")
    categories = {}
    for name, spec in cats.items():
        key = f"categories.{name}"
        if not isinstance(spec, dict) or not isinstance(spec.get("category1"), str):
            raise fail(key, "must have a category1 string and a synonyms list")
        related = words(spec.get("related", []), f"{key}.related")
        unknown = set(related) - set(cats)
        if unknown:
            raise fail(f"{key}.related", f"names unknown categories {sorted(unknown)}")
        categories[str(name)] = Category(str(name), spec["category1"].lower(),
                                         (str(name).lower(), *words(spec.get("synonyms", []), f"{key}.synonyms")),
                                         related)

    detail = doc.get("detail_nouns") or {"applies_to": [], "words": []}
    if not isinstance(detail, dict):
        raise fail("detail_nouns", "must have applies_to and words")
    return AttributeSchema(
        path=path,
        values=values,
        categories=categories,
        accessory_nouns=frozenset(words(doc.get("accessory_nouns", []), "accessory_nouns")),
        generic_nouns=frozenset(words(doc.get("generic_nouns", []), "generic_nouns")),
        detail_nouns=frozenset(words(detail.get("words", []), "detail_nouns.words")),
        detail_attributes=frozenset(words(detail.get("applies_to", []), "detail_nouns.applies_to")),
        contamination_cues=words(doc["contamination_cues"], "contamination_cues"),
        negation_words=frozenset(words(negation.get("words", []), "negation.words")),
        negation_suffixes=frozenset(words(negation.get("suffixes", []), "negation.suffixes")),
    )


def _key(phrase: str) -> str:
    """Normalised form: lower case, spaces and hyphens removed ("Crew-Neck" -> "crewneck")."""
    return re.sub(r"[\s\-]+", "", phrase.lower())


def _alternation(phrases) -> re.Pattern:
    """Whole-word regex for any phrase, longest first; inner spaces/hyphens match space, hyphen or nothing."""
    alternatives = sorted({r"[\s\-]?".join(map(re.escape, re.split(r"[\s\-]+", p.strip().lower())))
                           for p in phrases}, key=len, reverse=True)
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(alternatives) + r")(?![a-z0-9])")


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
    name = schema.category_by_key.get(_key(text)) if text else None
    if name is None and text:
        matches = [m.group(0) for m in schema.category_pattern.finditer(text)]
        if matches:
            name = schema.category_by_key[_key(max(matches, key=len))]
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
    if _key(text) in by_key:
        return by_key[_key(text)]
    matches = [m.group(0) for m in schema.value_patterns[attribute].finditer(text)]
    return by_key[_key(max(matches, key=len))] if matches else UNKNOWN


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
    before = _TOKEN.findall(scope[clause_start:start])
    after = _TOKEN.findall(scope[end:clause_end])

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
                    found[attribute] = (schema.value_by_key[attribute][_key(m.group(0))], sentence)
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
            return schema.category_by_key[_key(match.group(0))]
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
