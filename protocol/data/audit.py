"""Grounding audit: a human checks whether the extracted attributes refer to the item.

The loop: `make_audit_sample` draws items stratified by category2 and lists one QA row per
(item, grounded attribute) with the sentence the value came from; `write_audit` writes
`grounding_audit.csv` and reviewer instructions; a reviewer fills `verdict`
(correct / wrong / unsure) -- or `simulate_review` fills it from gt_* on synthetic data;
`analyze_audit` reads the completed CSV and reports correctness per attribute, which
phrases and garment nouns sit in the sentences of wrong extractions, and schema tuning
recommendations derived from those counts.

Only grounded values are audited: an "unknown" makes no claim about the item, and how
often an attribute is grounded at all is what `coverage_by_category` reports.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

from protocol.data.attribute_schema import AttributeSchema, load_attribute_schema
from protocol.data.grounding import ground_attributes_with_evidence
from protocol.data.hard_negatives import known_mask
from protocol.data.schema import ATTRIBUTES, SRC_COLUMNS, UNKNOWN
from protocol.io import atomic_path

logger = logging.getLogger(__name__)

AUDIT_CSV = "grounding_audit.csv"
AUDIT_README = "grounding_audit_README.md"
COVERAGE_CSV = "coverage.csv"
VERDICTS = ("correct", "wrong", "unsure")
AUDIT_COLUMNS = ("item_id", "category2", "attribute", "value", "evidence", "title", "description", "verdict", "notes")
REQUIRED_AUDIT_COLUMNS = ("item_id", "category2", "attribute", "value", "evidence", "verdict")
MIN_PER_CATEGORY = 2
PRECISION_THRESHOLD = 0.95
# A mined phrase is a contamination cue when it sits in at least this many wrong
# evidence sentences and in wrong ones at least this share of the time.
MIN_CUE_WRONG = 2
MIN_CUE_WRONG_SHARE = 0.75
CUE_NGRAMS = (2, 4)
N_EXAMPLES = 3
N_LISTED_LINES = 20
NOT_IN_TEXT = ("(not found in the text by the current schema: the dataset's value, "
               "from a source label or an older schema)")


# ----------------------------------------------------------------------------- sampling


def stratified_sample(frame: pd.DataFrame, by: str, n: int, min_per_stratum: int, seed: int = 0) -> pd.DataFrame:
    """A seeded sample of `n` rows (all rows if fewer) in which every value of `by` appears.

    Each stratum gets min(min_per_stratum, its size) rows; the rest is shared in
    proportion to what each stratum has left (largest remainder).
    """
    sizes = frame.groupby(by, sort=True).size()
    alloc = allocate_stratified(sizes.to_numpy(), n, min_per_stratum)
    if alloc.sum() > n:
        raise ValueError(f"a sample of {n} rows cannot hold {min_per_stratum} rows for each of the {len(sizes)} "
                         f"values of {by!r} ({int(alloc.sum())} needed); raise n or lower the minimum")
    parts = [frame[frame[by] == key].sample(n=int(k), random_state=seed)
             for key, k in zip(sizes.index, alloc) if k]
    return pd.concat(parts) if parts else frame.iloc[:0]


def allocate_stratified(sizes: np.ndarray, n: int, min_per_stratum: int) -> np.ndarray:
    """Rows per stratum: the minimum (capped by size) first, the rest proportional to room left."""
    sizes = np.asarray(sizes, dtype=np.int64)
    alloc = np.minimum(sizes, min_per_stratum)
    left = min(int(n), int(sizes.sum())) - int(alloc.sum())
    while left > 0:
        room = sizes - alloc
        share = left * room / room.sum()
        add = np.floor(share).astype(np.int64)
        if add.sum() == 0:  # every share below one row: the largest shares get one each
            add[np.argsort(-share, kind="stable")[:left]] = 1
        alloc += np.minimum(add, room)
        left -= int(np.minimum(add, room).sum())
    return alloc


def make_audit_sample(meta: pd.DataFrame, n: int = 200, seed: int = 0, *,
                      min_per_category: int = MIN_PER_CATEGORY, schema: AttributeSchema | None = None) -> pd.DataFrame:
    """QA rows (AUDIT_COLUMNS) for `n` items stratified by category2, one per grounded attribute.

    `value` is the dataset's value (what training uses); `evidence` is the sentence the
    current schema grounds it in (or the source label / graphic-policy note it came from).
    """
    missing = [c for c in ("item_id", "title", "description", "category2", *ATTRIBUTES) if c not in meta.columns]
    if missing:
        raise ValueError(f"meta lacks column(s) {missing} needed for the audit sample; pass the processed meta")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    schema = schema or load_attribute_schema()
    items = stratified_sample(meta, "category2", n, min_per_category, seed)
    logger.info("audit sample: %d items over %d category2 values", len(items), items["category2"].nunique())
    known = {a: known_mask(items[a]) for a in ATTRIBUTES}
    rows = []
    for i, item in enumerate(items.to_dict("records")):
        labels = {c.removeprefix("src_"): item[c] for c in SRC_COLUMNS if c in item}
        grounded = ground_attributes_with_evidence(item["title"], item["description"], item["category2"],
                                                   schema, labels)
        for attribute in (a for a in ATTRIBUTES if known[a][i]):
            value = str(item[attribute])
            found, evidence = grounded.get(attribute, (UNKNOWN, ""))
            rows.append({
                "item_id": item["item_id"], "category2": item["category2"], "attribute": attribute, "value": value,
                "evidence": evidence if found == value else NOT_IN_TEXT,
                "title": item["title"], "description": item["description"], "verdict": "", "notes": "",
            })
    return pd.DataFrame(rows, columns=list(AUDIT_COLUMNS))


def coverage_by_category(meta: pd.DataFrame) -> pd.DataFrame:
    """Per category2: item count and the fraction of items with each attribute grounded."""
    known = pd.DataFrame({a: known_mask(meta[a]) for a in ATTRIBUTES}, index=meta.index)
    coverage = known.groupby(meta["category2"].astype(str)).mean()
    coverage.insert(0, "n_items", meta.groupby(meta["category2"].astype(str)).size())
    return coverage.rename_axis("category2").reset_index()


def simulate_review(sample: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Fill `verdict` from gt_*: correct when the value equals the true one, else wrong.

    A true value of "unknown" means the item has no such attribute, so any extracted
    value is wrong. A row whose own value is unknown makes no claim: it is marked unsure.
    """
    needed = sorted({f"gt_{a}" for a in sample["attribute"].unique()} - set(meta.columns))
    if needed:
        raise ValueError(f"simulate_review needs column(s) {needed} in meta (true attributes, synthetic data only)")
    by_item = meta.set_index(meta["item_id"].astype(str))
    stray = sorted(set(sample["item_id"].astype(str)) - set(by_item.index))
    if stray:
        raise ValueError(f"audit rows name {len(stray)} item(s) not in meta, e.g. {stray[:5]}")
    truth = np.array([by_item.at[i, f"gt_{a}"] for i, a in zip(sample["item_id"].astype(str), sample["attribute"])],
                     dtype=object).astype(str)
    value = sample["value"].astype(str).to_numpy()
    verdict = np.where(value == truth, "correct", "wrong")
    verdict[~known_mask(sample["value"])] = "unsure"
    return sample.assign(verdict=verdict)


def write_audit(sample: pd.DataFrame, out_dir: str | Path, coverage: pd.DataFrame | None = None) -> Path:
    """grounding_audit.csv + grounding_audit_README.md (+ coverage.csv when given); returns the CSV path."""
    out_dir = Path(out_dir)
    csv_path = out_dir / AUDIT_CSV
    with atomic_path(csv_path) as tmp:
        sample.to_csv(tmp, index=False)
    with atomic_path(out_dir / AUDIT_README) as tmp:
        tmp.write_text(_readme(sample, csv_path.resolve()))
    if coverage is not None:
        with atomic_path(out_dir / COVERAGE_CSV) as tmp:
            coverage.to_csv(tmp, index=False)
    return csv_path


def _readme(sample: pd.DataFrame, csv_path: Path) -> str:
    per_attribute = ", ".join(f"{a}: {k}" for a, k in sample["attribute"].value_counts().sort_index().items())
    return f"""# Grounding audit

`{AUDIT_CSV}` lists {len(sample)} extracted attributes of {sample['item_id'].nunique()} items
({sample['category2'].nunique()} category2 values; {per_attribute}).

For every row, answer one question: **does this attribute value describe the item itself,
the garment its category2 names?** "Pairs well with our denim shorts" on a tee does not make
the tee denim.

| column | meaning |
|---|---|
| item_id | the item (one image of one product) |
| category2 | what the item is (tees, cardigans, shorts, ...; `graphic` = a printed top) |
| attribute | material, pattern, neckline, sleeve or color |
| value | the value the dataset holds for it |
| evidence | the sentence the value was taken from (or the source label it came from) |
| title, description | the full product text, for context |
| verdict | **fill this**: `correct`, `wrong` or `unsure` (lower case, nothing else) |
| notes | optional free text: why, or what the right value would be |

- `correct`: the value describes the item.
- `wrong`: it describes something else (another garment, an accessory, a part) or is false.
- `unsure`: the text does not let you decide.

Every row needs a verdict; the analysis stops and lists the CSV line numbers (the header is
line 1) of rows with an empty or other verdict. Keep the columns; you may sort the rows.

When done, run:

    mlflow run . -e analyze_audit -P audit_csv={csv_path}

It reports the correctness of each attribute, the phrases and garment nouns found in the
sentences of wrong extractions, and what to change in `protocol/data/attribute_schema.yaml`.
"""


# ----------------------------------------------------------------------------- analysis


@dataclass
class AuditReport:
    csv_path: str
    n_rows: int
    counts: dict[str, int]                          # verdict -> rows
    precision: float | None                         # correct / (correct + wrong), all attributes
    per_attribute: dict[str, dict]                  # attribute -> n, correct, wrong, unsure, precision
    per_value: dict[str, dict[str, dict]]           # attribute -> value -> the same counts
    per_category: dict[str, dict]                   # category2 -> the same counts
    contamination: list[dict] = field(default_factory=list)  # ranked cues of wrong extractions
    recommendations: list[str] = field(default_factory=list)
    precision_threshold: float = PRECISION_THRESHOLD

    def to_dict(self) -> dict:
        return asdict(self)


def read_audit_csv(csv_path: str | Path) -> pd.DataFrame:
    """The completed audit as strings, with `line`: the 1-based CSV line each row starts on."""
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"audit file {path} does not exist; make it with `mlflow run . -e audit`")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_AUDIT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing} (has {reader.fieldnames}); "
                             f"keep the columns of {AUDIT_CSV} as written by the audit stage")
        records, line = [], 1  # line 1 is the header
        for record in reader:
            records.append({**{k: (v or "") for k, v in record.items() if k is not None}, "line": line + 1})
            line = reader.line_num
    if not records:
        raise ValueError(f"{path} has a header but no rows; audit rows come from `mlflow run . -e audit`")
    return pd.DataFrame.from_records(records)


def analyze_audit(csv_path: str | Path, *, schema: AttributeSchema | None = None,
                  precision_threshold: float = PRECISION_THRESHOLD) -> AuditReport:
    """Correctness per attribute, contamination sources and schema recommendations of a completed audit."""
    audit = read_audit_csv(csv_path)
    audit["verdict"] = audit["verdict"].str.strip().str.lower()
    bad = audit[~audit["verdict"].isin(VERDICTS)]
    if len(bad):
        listed = ", ".join(f"{line} ({v!r})" for line, v in zip(bad["line"][:N_LISTED_LINES], bad["verdict"]))
        more = f" and {len(bad) - N_LISTED_LINES} more" if len(bad) > N_LISTED_LINES else ""
        raise ValueError(f"{csv_path}: {len(bad)} row(s) have an empty or invalid verdict, at CSV line(s) "
                         f"{listed}{more}; allowed values: {', '.join(VERDICTS)}. Fill them and run again.")
    schema = schema or load_attribute_schema()
    contamination = contamination_sources(audit, schema)
    per_attribute = _counts_by(audit, "attribute")
    per_value = {a: _counts_by(rows, "value") for a, rows in audit.groupby("attribute", sort=True)}
    report = AuditReport(
        csv_path=str(csv_path),
        n_rows=len(audit),
        counts={v: int((audit["verdict"] == v).sum()) for v in VERDICTS},
        precision=_verdict_counts(audit["verdict"])["precision"],
        per_attribute=per_attribute,
        per_value=per_value,
        per_category=_counts_by(audit, "category2"),
        contamination=contamination,
        precision_threshold=precision_threshold,
    )
    report.recommendations = recommendations(report, schema)
    return report


def _verdict_counts(verdicts: pd.Series) -> dict:
    counts = {v: int((verdicts == v).sum()) for v in VERDICTS}
    judged = counts["correct"] + counts["wrong"]
    return {"n": int(len(verdicts)), **counts, "precision": counts["correct"] / judged if judged else None}


def _counts_by(audit: pd.DataFrame, column: str) -> dict[str, dict]:
    return {str(k): _verdict_counts(rows["verdict"]) for k, rows in audit.groupby(column, sort=True)}


def contamination_sources(audit: pd.DataFrame, schema: AttributeSchema) -> list[dict]:
    """Cues found in the evidence of wrong rows, most wrong first.

    Three kinds: `schema_cue` (a contamination cue the schema already has), `garment`
    (a noun of another category or an accessory), `phrase` (a word n-gram mined from the
    wrong sentences that is rare in correct ones).
    """
    judged = audit[audit["verdict"].isin(("correct", "wrong"))].reset_index(drop=True)
    if not (judged["verdict"] == "wrong").any():
        return []
    text = judged["evidence"].str.lower()
    wrong = (judged["verdict"] == "wrong").to_numpy()
    found = []
    for cue in schema.contamination_cues:
        found.append(_cue_entry(cue, "schema_cue", text.str.contains(_phrase_regex(cue)).to_numpy(), judged, wrong))
    own = {c: schema.own_categories(c) or frozenset() for c in judged["category2"].unique()}
    for noun, kind in schema.noun_kinds.items():
        if kind != "accessory" and not kind.startswith("category:"):
            continue
        hits = text.str.contains(_phrase_regex(_noun_text(noun, schema))).to_numpy()
        if kind.startswith("category:"):  # a noun of the item's own category is not another garment
            category = kind.removeprefix("category:")
            hits = hits & ~judged["category2"].map(lambda c: category in own[c]).to_numpy()
        found.append(_cue_entry(_noun_text(noun, schema), "garment", hits, judged, wrong))
    found.extend(_mined_phrases(text, judged, wrong, schema))
    found = [f for f in found if f["n_wrong"] > 0]
    return sorted(found, key=lambda f: (-f["n_wrong"], f["n_correct"], f["cue"]))


def _mined_phrases(text: pd.Series, judged: pd.DataFrame, wrong: np.ndarray, schema: AttributeSchema) -> list[dict]:
    """Word n-grams before the extracted value that mark wrong rows.

    Only the words before the value count: a contamination cue governs what follows it,
    so a phrase after the value could not have caused it (and adding it would not help).
    """
    before = pd.Series([_before_value(t, a, v, schema) for t, a, v in
                        zip(text, judged["attribute"], judged["value"].str.lower())], index=judged.index)
    vectorizer = CountVectorizer(ngram_range=CUE_NGRAMS, binary=True, token_pattern=r"[a-z0-9]+(?:-[a-z0-9]+)*")
    try:
        hits = vectorizer.fit_transform(before).tocsc()
    except ValueError:  # no words before any value
        return []
    vocabulary = vectorizer.get_feature_names_out()
    n_wrong = np.asarray(hits[wrong].sum(axis=0)).ravel()
    n_all = np.asarray(hits.sum(axis=0)).ravel()
    value_words = {w for lexicon in schema.values.values() for syns in lexicon.values() for s in syns
                   for w in s.replace("-", " ").split()}
    known_cues = [c.lower() for c in schema.contamination_cues]
    candidates = []
    for j in np.flatnonzero((n_wrong >= MIN_CUE_WRONG) & (n_wrong >= MIN_CUE_WRONG_SHARE * n_all)):
        words = vocabulary[j].split()
        # Value words are what was extracted, not the cue; stop words alone say nothing.
        if value_words & set(words) or all(w in ENGLISH_STOP_WORDS for w in words):
            continue
        if any(_contains(cue, vocabulary[j]) or _contains(vocabulary[j], cue) for cue in known_cues):
            continue  # reported as a schema cue
        candidates.append((vocabulary[j], frozenset(hits[:, j].indices[wrong[hits[:, j].indices]])))
    kept: list[tuple[str, frozenset]] = []
    # Most wrong rows first, longer phrases first among equals; a phrase whose wrong rows a
    # kept phrase already explains ("tees sold" beside "sold separately") adds nothing.
    for phrase, rows in sorted(candidates, key=lambda c: (-len(c[1]), -len(c[0].split()), c[0])):
        if not any(rows <= kept_rows for _, kept_rows in kept):
            kept.append((phrase, rows))
    found = []
    for phrase, _ in kept:
        j = vectorizer.vocabulary_[phrase]
        found.append(_cue_entry(phrase, "phrase", hits[:, j].toarray().ravel() > 0, judged, wrong))
    return found


def _before_value(evidence: str, attribute: str, value: str, schema: AttributeSchema) -> str:
    """The evidence up to the first mention of the value (all of it when the value is not named)."""
    synonyms = schema.values.get(attribute, {}).get(value, (value,))
    match = re.search("|".join(_phrase_regex(s) for s in sorted(synonyms, key=len, reverse=True)), evidence)
    return evidence if match is None else evidence[: match.start()]


def _cue_entry(cue: str, kind: str, hits: np.ndarray, judged: pd.DataFrame, wrong: np.ndarray) -> dict:
    wrong_hits = judged[hits & wrong]
    return {
        "cue": cue,
        "kind": kind,
        "n_wrong": int(len(wrong_hits)),
        "n_correct": int((hits & ~wrong).sum()),
        "wrong_by_attribute": {str(k): int(v) for k, v in wrong_hits["attribute"].value_counts().sort_index().items()},
        "examples": [f"line {line}: {a}={v} from {e!r}" for line, a, v, e in
                     wrong_hits[["line", "attribute", "value", "evidence"]].head(N_EXAMPLES).itertuples(index=False)],
    }


def recommendations(report: AuditReport, schema: AttributeSchema) -> list[str]:
    """Concrete schema changes, each backed by the counts that call for it."""
    advice = []
    for attribute, stats in report.per_attribute.items():
        if stats["precision"] is not None and stats["precision"] < report.precision_threshold:
            worst = sorted(((v, s["wrong"]) for v, s in report.per_value[attribute].items() if s["wrong"]),
                           key=lambda x: (-x[1], x[0]))
            listed = ", ".join(f"'{v}' ({k} wrong)" for v, k in worst)
            advice.append(f"attribute {attribute} precision {stats['precision']:.2f} "
                          f"< {report.precision_threshold:.2f} "
                          f"({stats['wrong']} wrong of {stats['correct'] + stats['wrong']} judged): review the "
                          f"synonyms and attachment rules of {listed}")
        if stats["n"] and stats["unsure"] / stats["n"] > 0.2:
            advice.append(f"{stats['unsure']} of {stats['n']} {attribute} verdicts are unsure: the evidence "
                          "sentences are ambiguous; tighten the synonyms or the reviewer guidance for it")
    for entry in report.contamination:
        what = _wrong_phrase(entry["wrong_by_attribute"])
        if entry["kind"] == "phrase":
            advice.append(f"add '{entry['cue']}' to contamination_cues: {what} "
                          f"(in {entry['n_correct']} correct ones)")
        elif entry["kind"] == "schema_cue":
            advice.append(f"'{entry['cue']}' is already a contamination cue yet sits in the sentences of {what}: "
                          "the value is named before the cue; check these sentences and extend the cue rule")
        else:
            advice.append(f"another garment, '{entry['cue']}', is named in the sentences of {what}: extend the "
                          "attachment rules so values attached to it are not taken")
    if not advice:
        advice.append(f"all {report.counts['correct']} judged extractions are correct and no attribute is below "
                      f"{report.precision_threshold:.2f}: this audit calls for no schema change")
    return advice


def _wrong_phrase(by_attribute: dict[str, int]) -> str:
    return ", ".join(f"{k} wrong {a} extraction{'s' if k > 1 else ''}"
                     for a, k in sorted(by_attribute.items(), key=lambda x: (-x[1], x[0])))


def _phrase_regex(phrase: str) -> str:
    """Whole words; a space or hyphen inside the phrase matches either or nothing."""
    words = [re.escape(w) for w in re.split(r"[\s\-]+", phrase.strip()) if w]
    return r"(?<![a-z0-9])" + r"[\s\-]?".join(words) + r"(?![a-z0-9])"


def _contains(outer: str, inner: str) -> bool:
    return re.search(_phrase_regex(inner), outer) is not None


def _noun_text(noun_key: str, schema: AttributeSchema) -> str:
    """The schema's spelling of a normalised noun key ("tshirt" -> "t shirt")."""
    spellings = [*schema.accessory_nouns, *(s for c in schema.categories.values() for s in c.synonyms)]
    return next((s for s in spellings if re.sub(r"[\s\-]+", "", s) == noun_key), noun_key)
