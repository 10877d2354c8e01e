"""The manifest and the spec tests agree: every rule has a test, every test cites a rule.

Checks manifest.toml itself (levels, error types, regexes, parameter kinds) and its links with the
spec modules (``manifest.spec_citations``): a rule nobody tests, a citation of a rule that does not
exist, or a test whose level differs from its rule's level all fail here. Rank-local and
deterministic: every rank computes the same answer.
"""

from __future__ import annotations

import builtins
import inspect
import re

import pytest

from conformance.specs import data, manifest
from conformance.specs.calls import settle

pytestmark = pytest.mark.core

MANIFEST = manifest.load()
RULES = manifest.rules(MANIFEST)


def test_manifest_is_well_formed():
    """Every entry has a kind, params, errors and rules of the documented shape.

    Manifest meta: levels core / robust / impl_defined; errors name builtin exception types and
    compile as regexes; dtypes are "all" or names among the 14.
    """
    problems = []
    if tuple(MANIFEST["meta"]["dtypes"]) != data.DTYPE_NAMES:
        problems.append("meta.dtypes differs from the 14 dtype names")
    for op, entry in MANIFEST["ops"].items():
        for key in ("kind", "since", "params", "dtypes", "errors", "rules"):
            if key not in entry:
                problems.append(f"{op}: missing {key}")
        for p in entry.get("params", []):
            if p.get("kind") not in manifest.PARAM_KINDS:
                problems.append(f"{op}: parameter {p.get('name')} has kind {p.get('kind')}")
        dtypes = entry.get("dtypes")
        if dtypes != "all" and not set(dtypes or []) <= set(data.DTYPE_NAMES):
            problems.append(f"{op}: unknown dtypes {dtypes}")
        for error in entry.get("errors", []):
            for name in error["type"].split("|"):
                if not isinstance(getattr(builtins, name, None), type):
                    problems.append(f"{op}: error type {name} is not a builtin exception")
            try:
                re.compile(error["match"])
            except re.error as exc:
                problems.append(f"{op}: error regex {error['match']!r}: {exc}")
            if error["level"] not in manifest.LEVELS:
                problems.append(f"{op}: error level {error['level']}")
        ids = [rule["id"] for rule in entry.get("rules", [])]
        if len(ids) != len(set(ids)):
            problems.append(f"{op}: duplicate rule ids {ids}")
        for rule in entry.get("rules", []):
            if rule.get("level") not in manifest.LEVELS or not rule.get("text"):
                problems.append(f"{op}/{rule['id']}: bad level or empty text")
    settle(problems)


def test_every_rule_has_a_test():
    """Each (op, rule) of the manifest is cited by at least one spec test's spec mark."""
    cited = {(c.op, c.rule) for c in manifest.spec_citations()}
    missing = sorted(f"{op}/{rule}" for op, rule in RULES if (op, rule) not in cited)
    settle([f"rules without a test: {missing}" if missing else None])


def test_every_citation_names_a_rule():
    """Each spec mark names an (op, rule) the manifest has, so reports link to real rules."""
    unknown = sorted(
        f"{c.module}::{c.test} cites {c.op}/{c.rule}"
        for c in manifest.spec_citations()
        if (c.op, c.rule) not in RULES
    )
    settle([f"citations of unknown rules: {unknown}" if unknown else None])


def test_test_levels_match_rule_levels():
    """A spec test carries exactly one level marker, the level of the rule it cites."""
    problems = []
    for c in manifest.spec_citations():
        rule = RULES.get((c.op, c.rule))
        if rule is None:
            continue
        if c.level is None:
            problems.append(f"{c.module}::{c.test} has no single level marker")
        elif c.level != rule["level"]:
            problems.append(
                f"{c.module}::{c.test} is {c.level}, rule {c.op}/{c.rule} is {rule['level']}"
            )
    settle(problems)


# A quotation in a spec test's docstring: double-quoted text long enough to be a rule's words.
_QUOTE = re.compile(r'"([^"]{12,})"', re.S)


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip()


def _quoted_fragments(doc: str) -> list[str]:
    """The quoted rule text of a docstring, cut at each elision ("...")."""
    fragments = []
    for quote in _QUOTE.findall(doc):
        for fragment in re.split(r"\s*\.\.\.\s*", _normalized(quote)):
            fragment = _normalized(fragment)
            if len(fragment) >= 8:
                fragments.append(fragment)
    return fragments


def test_docstring_quotes_are_the_manifest_text():
    """A spec test that cites a rule quotes the manifest's text of some rule, word for word.

    The rule's text lives once, in manifest.toml (reports show it from there); a docstring that
    quotes it must not drift from it. Elisions ("...") and a final full stop are allowed.
    """
    texts = [_normalized(rule["text"]) for rule in RULES.values()]
    cited_tests = {(c.module, c.test) for c in manifest.spec_citations()}
    problems = []
    for module_name, test_name in sorted(cited_tests):
        module = __import__(f"conformance.specs.{module_name}", fromlist=[test_name])
        doc = inspect.getdoc(getattr(module, test_name)) or ""
        for fragment in _quoted_fragments(doc):
            if not any(fragment in text for text in texts):
                problems.append(f"{module_name}::{test_name} quotes text no rule has: {fragment!r}")
    settle(problems)
