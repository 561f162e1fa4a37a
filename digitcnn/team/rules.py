"""What a request to the team server may ask, whatever its route or method: the rules the gate
(digitcnn.team.gate) applies to every request it lets through.

Names. A name of an experiment or a registered model that starts with a user's name and a
dot (`alice.digitcnn`, and a bare `alice.`) is that user's: only they (or an admin) may create
it or rename something to it, so a teammate who comes first cannot take it. A name with a
character that looks like a dot but is not one (`alice\u2024digitcnn`, `alice\uff0edigitcnn`,
`alice\u00b7digitcnn`) is refused outright, and so is a user name with any dot. Other names
are first come, first served, as in MLflow.

The server's tags. OWNER_TAG (on runs, experiments, logged models, registered models) and
REGISTERED_BY_TAG (on model versions) are written by the server alone: a request that names
one as a tag key anywhere (its JSON body at any depth, its query, its path) is refused,
whatever the route or method, admins included.
"""

from __future__ import annotations

import unicodedata
from typing import Any

OWNER_TAG = "digitcnn.owner"
REGISTERED_BY_TAG = "digitcnn.registered_by"
SERVER_TAGS = (OWNER_TAG, REGISTERED_BY_TAG)

# Characters drawn like a full stop that are not one (NFKC maps some, not all, to ".").
LOOK_ALIKE_DOTS = set(
    "\u00b7\u0387\u05c5\u06d4\u0701\u0702\u16eb\u2024\u2027\u2219\u22c5\u2e31\u2e33"
    "\u30fb\u3002\ua4f8\ufe52\uff0e\uff61\U00010101"
)


def owner_of(name: str) -> str | None:
    """The user a name belongs to: what comes before its first dot, if it has one."""
    owner, dot, _ = name.partition(".")
    return owner if dot and owner else None


def _look_alike_dot(name: str) -> str | None:
    for char in name:
        if char != "." and (char in LOOK_ALIKE_DOTS or "." in unicodedata.normalize("NFKC", char)):
            return char
    return None


def name_refusal(name: str, user: str, is_admin: bool) -> str | None:
    """Why `user` may not give something the name `name`, or None."""
    char = _look_alike_dot(name)
    if char is not None:
        return (
            f"{name!r} contains {unicodedata.name(char, repr(char)).lower()} (U+{ord(char):04X}), "
            "which looks like a dot: a name that starts with 'USER.' is that user's; use '.'"
        )
    owner = owner_of(name)
    if owner is not None and owner != user and not is_admin:
        return (
            f"{name!r} belongs to user {owner!r}: a name that starts with 'USER.' is that "
            f"user's alone; yours start with '{user}.'"
        )
    return None


def user_name_refusal(name: str) -> str | None:
    if "." in name or _look_alike_dot(name) is not None:
        return f"user name {name!r} contains a dot: a name that starts with 'USER.' is USER's"
    return None


def _keys(value: Any):
    """Every value under a "key" field of a JSON document, at any depth."""
    if isinstance(value, dict):
        for field, item in value.items():
            if field == "key":
                yield item
            yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)


def forged_tag(body: Any, query: dict[str, list[str]], path: str) -> str | None:
    """A server tag that a writing request names, or None."""
    named = {*_keys(body), *query.get("key", []), *path.split("/")}
    forged = sorted(named & set(SERVER_TAGS))
    return forged[0] if forged else None


def refusal(
    route_names: str | None,
    body: Any,
    query: dict[str, list[str]],
    path: str,
    user: str,
    is_admin: bool,
) -> str | None:
    """Why a writing request is refused, or None: `route_names`, the body field that names
    something (`name`, `new_name`, `username`), if the route has one."""
    forged = forged_tag(body, query, path)
    if forged is not None:
        return f"tag {forged!r} is set by the team server alone (who created or registered it)"
    if route_names is None or not isinstance(body, dict):
        return None
    name = str(body.get(route_names) or "")
    if route_names == "username":
        return user_name_refusal(name)
    return name_refusal(name, user, is_admin)
