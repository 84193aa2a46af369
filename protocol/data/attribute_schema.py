"""attribute_schema.yaml: its lexicons, cue phrases and category words, loaded and validated.

`load_attribute_schema` reads the packaged file (or a given one) with `yaml.safe_load` and
checks every key; `AttributeSchema` holds the vocabulary and the compiled patterns that
`protocol.data.grounding` matches text against. `phrase_key` is the normalised form every
lookup uses ("Crew-Neck" -> "crewneck").
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from protocol.data.schema import ATTRIBUTES

logger = logging.getLogger(__name__)

DEFAULT_SCHEMA_PATH = Path(__file__).with_name("attribute_schema.yaml")
TOKEN = re.compile(r"[a-z0-9]+")  # a word, as grounding counts words


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
        return {a: {phrase_key(s): v for v, syns in vals.items() for s in syns} for a, vals in self.values.items()}

    @functools.cached_property
    def cue_pattern(self) -> re.Pattern:
        return _alternation(self.contamination_cues)

    @functools.cached_property
    def category_pattern(self) -> re.Pattern:
        return _alternation(s for c in self.categories.values() for s in c.synonyms)

    @functools.cached_property
    def category_by_key(self) -> dict[str, str]:
        return {phrase_key(s): c.name for c in self.categories.values() for s in c.synonyms}

    @functools.cached_property
    def noun_kinds(self) -> dict[str, str]:
        """normalised noun -> 'category:<name>' | 'accessory' | 'generic' | 'detail'."""
        kinds = {phrase_key(w): "detail" for w in self.detail_nouns}
        kinds |= {phrase_key(w): "generic" for w in self.generic_nouns}
        kinds |= {phrase_key(w): "accessory" for w in self.accessory_nouns}
        kinds |= {k: f"category:{c}" for k, c in self.category_by_key.items()}
        return kinds

    @functools.cached_property
    def max_noun_words(self) -> int:
        words = [*self.accessory_nouns, *self.generic_nouns, *self.detail_nouns,
                 *(s for c in self.categories.values() for s in c.synonyms)]
        return max(len(TOKEN.findall(w)) for w in words)

    def own_categories(self, category2: str) -> frozenset[str] | None:
        """Categories whose nouns name this item; None when the item's category is not in the schema."""
        category = self.categories.get(category2)
        return None if category is None else frozenset((category.name, *category.related))


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
                other = seen.setdefault(phrase_key(s), value)
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


def phrase_key(phrase: str) -> str:
    """Normalised form: lower case, spaces and hyphens removed ("Crew-Neck" -> "crewneck")."""
    return re.sub(r"[\s\-]+", "", phrase.lower())


def _alternation(phrases) -> re.Pattern:
    """Whole-word regex for any phrase, longest first; inner spaces/hyphens match space, hyphen or nothing."""
    alternatives = sorted({r"[\s\-]?".join(map(re.escape, re.split(r"[\s\-]+", p.strip().lower())))
                           for p in phrases}, key=len, reverse=True)
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(alternatives) + r")(?![a-z0-9])")
