"""Schemathesis hooks for scripts/schemathesis.sh: the envelope rules the OpenAPI document states
in `x-` keywords, because JSON Schema cannot (tests/api/openapi.rs enforces the same keywords).

Schemathesis generates from JSON Schema alone, so a body it calls valid may break one of them
(an `id` of 128 characters but more than 128 bytes, say) and be refused, rightly, with 400. Such
positive cases are dropped here; nothing else is. Negative cases are kept: whatever else makes
them invalid, the gateway must refuse them.
"""

import pathlib

import schemathesis
import yaml

DOCUMENT = pathlib.Path(__file__).resolve().parent.parent / "openapi" / "dataloy-gateway.yaml"
ENVELOPE = yaml.safe_load(DOCUMENT.read_text())["components"]["schemas"]["Notification"]


def depth(value):
    """Levels of arrays and objects, as the gateway counts them (a scalar is 0)."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def breaks_an_extension(body):
    if not isinstance(body, dict):
        return False
    if depth(body) > ENVELOPE["x-maxNesting"]:
        return True
    for name, rules in ENVELOPE["properties"].items():
        if name not in body:
            continue
        value = body[name]
        limit = rules.get("x-maxUtf8Bytes")
        if limit is not None and isinstance(value, str) and len(value.encode("utf-8")) > limit:
            return True
        if rules.get("x-integerLiteral") and isinstance(value, float):
            return True
    return False


@schemathesis.hook("filter_case").apply_to(path="/webhooks/dataloy")
def valid_by_the_whole_document(context, case):
    meta = case.meta
    positive = meta is None or meta.generation.mode.is_positive
    return not (positive and breaks_an_extension(case.body))
