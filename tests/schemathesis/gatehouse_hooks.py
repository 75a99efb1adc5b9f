"""Schemathesis hooks for the Gatehouse Admin API run (tests/tests/schemathesis.rs).

One check replaces Schemathesis's `positive_data_acceptance`, which fails on any 400 answer to a
request that is valid by the document. The Admin API refuses some such requests by design, as
Kong does, for rules that a JSON Schema cannot state and that the document states in prose:

- the request names an entity that does not exist, or takes a key that is taken (Kong codes 3,
  4; 409 for unique values is accepted by Schemathesis already);
- `offset` is not one this API handed out (code 7): it is an opaque cursor;
- a schema violation (code 2) whose every message comes from such a rule: PEM contents and
  key pairs, host names and addresses, URLs, regular expressions, rules across fields or
  between the URL and the body (a PUT by id misses the key that a PUT by key takes from the
  URL).

Any other refusal of a schema-valid request fails the run: a message that the schema engine
(shared/src/schema.rs) gives for a rule the document does state as schema (`expected a string`,
`expected one of`, `unknown field`, `required field missing`, a range, a minimum length,
duplicates, or one of the checks the document publishes as a `pattern`) means the document is
looser than the validation.
"""

import json
import re
import uuid

import schemathesis

# Messages of rules the document states as schema (types, enums, ranges, required, unknown
# fields, lengths, uniqueness, and the checks published as `pattern`).
SCHEMA_RULES = re.compile(
    r"^(expected an? (string|integer|number|boolean|array|set|map|record|valid UUID)"
    r"|expected one of: "
    r"|required field missing$"
    r"|unknown field$"
    r"|value should be between "
    r"|length must be at least "
    r"|.* is duplicated$"
    r"|invalid tag "
    r"|invalid value '.*': the only accepted ascii characters"
    r"|invalid value: )"
)


def is_uuid(text):
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36


def leaf_messages(value):
    """Every message of a Kong `fields` object, however nested."""
    if isinstance(value, dict):
        for inner in value.values():
            yield from leaf_messages(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from leaf_messages(inner)
    elif isinstance(value, str):
        yield value


@schemathesis.check
def schema_valid_refused_only_by_prose_rules(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code != 400:
        # 2xx, 404 and 409 are fine; 5xx fails `not_a_server_error`, other codes fail
        # `status_code_conformance` when undocumented.
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"400 without a JSON body: {response.content[:200]!r}")
    code = body.get("code") if isinstance(body, dict) else None
    if code in (3, 4):
        return None
    # `POST /config`: the entities inside a declarative file are checked as the Admin API
    # checks each of them, which the document states in prose (it describes the file's
    # top level only).
    if code == 14:
        return None
    if code == 7 and "offset" in (case.query or {}):
        return None
    if code == 2:
        fields = body.get("fields") or {}
        offending = [m for m in leaf_messages(fields) if SCHEMA_RULES.match(m)]
        if not offending:
            return None
        # A PUT body may leave out the endpoint key (`name`, `group`, ...) because a URL that
        # names the entity by its key supplies it; a URL that names it by id does not (the
        # operation says so in prose), and then the key is missing.
        last_segment = case.formatted_path.rstrip("/").rsplit("/", 1)[-1]
        if (
            case.method.upper() == "PUT"
            and is_uuid(last_segment)
            and all(value == "required field missing" for value in fields.values())
        ):
            return None
        raise AssertionError(
            "A request valid by the document was refused for a rule the document states as "
            f"schema (the document is looser than the validation): {offending}"
        )
    raise AssertionError(f"A request valid by the document was refused: {body}")
