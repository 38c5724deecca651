"""Compute list filters (``filter=``): the subset of the AIP-160 grammar GCE accepts, parsed strictly.

Several expressions must each be in parentheses: "To filter on multiple expressions, provide each
separate expression within parentheses" (the ``filter`` field of every compute v1 list request,
e.g. ``AggregatedListInstancesRequest``; https://cloud.google.com/compute/docs/reference/rest/v1/targetPools/aggregatedList).
GCE answers the unparenthesised form ``a = x AND b = y`` with 400 "Invalid value for field
'filter': '...'. Invalid list filter expression." (reported in
https://github.com/googleapis/google-cloud-go/issues/11318 and
https://github.com/googleapis/nodejs-compute/issues/48), and so does this parser when asked
(``each_in_parentheses``, which every compute list passes).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable


class FilterError(ValueError):
    """The filter string is not one the fake (or GCE) understands; answered as HTTP 400."""


_OPS = ("!=", "<=", ">=", "=", ":", "<", ">")


class _FilterParser:
    """Recursive-descent parser for the GCE list ``filter`` syntax (the commonly used subset).

    Grammar: ``expr := and (OR and)*``, ``and := unary ([AND] unary)*``,
    ``unary := NOT unary | '(' expr ')' | FIELD OP VALUE``. Adjacent terms are ANDed, as in
    ``(labels.a = x) (status = RUNNING)``.
    """

    def __init__(self, text: str, each_in_parentheses: bool = False) -> None:
        self.text, self.pos = text, 0
        self.each_in_parentheses = each_in_parentheses
        self.terms = 0    # comparisons parsed
        self.wrapped = 0  # of which stood alone inside their own parentheses

    def parse(self) -> Callable[[dict[str, Any]], bool]:
        node = self._or()
        self._ws()
        if self.pos != len(self.text):
            raise FilterError(f"unexpected {self.text[self.pos:]!r}")
        if self.each_in_parentheses and self.terms > 1 and self.wrapped < self.terms:
            raise FilterError("several expressions, not each in parentheses")
        return node

    def _ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _keyword(self, word: str) -> bool:
        self._ws()
        m = re.compile(rf"{word}(?=[\s(])").match(self.text, self.pos)
        if m:
            self.pos = m.end()
            return True
        return False

    def _or(self) -> Callable[[dict[str, Any]], bool]:
        parts = [self._and()]
        while self._keyword("OR"):
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else (lambda r: any(p(r) for p in parts))

    def _and(self) -> Callable[[dict[str, Any]], bool]:
        parts = [self._unary()]
        while True:
            self._ws()
            if self.pos >= len(self.text) or self.text[self.pos] == ")":
                break
            if re.compile(r"OR(?=[\s(])").match(self.text, self.pos):
                break
            self._keyword("AND")
            parts.append(self._unary())
        return parts[0] if len(parts) == 1 else (lambda r: all(p(r) for p in parts))

    def _unary(self) -> Callable[[dict[str, Any]], bool]:
        self._ws()
        if self._keyword("NOT"):
            inner = self._unary()
            return lambda r: not inner(r)
        if self.text.startswith("(", self.pos):
            self.pos += 1
            before = self.terms
            node = self._or()
            if self.terms == before + 1:
                self.wrapped += 1
            self._ws()
            if not self.text.startswith(")", self.pos):
                raise FilterError("missing ')'")
            self.pos += 1
            return node
        return self._term()

    def _term(self) -> Callable[[dict[str, Any]], bool]:
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*").match(self.text, self.pos)
        if not m:
            raise FilterError(f"expected a field name at {self.text[self.pos:]!r}")
        path, self.pos = m.group(), m.end()
        self.terms += 1
        self._ws()
        op = next((o for o in _OPS if self.text.startswith(o, self.pos)), None)
        if op is None:
            m = re.compile(r"(eq|ne)\s+").match(self.text, self.pos)
            if not m:
                raise FilterError(f"expected an operator after {path!r}")
            op = m.group(1)
        self.pos += len(op)
        self._ws()
        value = self._value()
        return _term_matcher(path, op, value)

    def _value(self) -> str:
        if self.pos < len(self.text) and self.text[self.pos] in "\"'":
            quote = self.text[self.pos]
            end = self.pos + 1
            out = []
            while end < len(self.text) and self.text[end] != quote:
                if self.text[end] == "\\" and end + 1 < len(self.text):
                    end += 1
                out.append(self.text[end])
                end += 1
            if end >= len(self.text):
                raise FilterError("unterminated string")
            self.pos = end + 1
            return "".join(out)
        m = re.compile(r"[^\s()]+").match(self.text, self.pos)
        if not m:
            raise FilterError("expected a value")
        self.pos = m.end()
        return m.group()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _resolve(resource: Any, path: list[str]) -> list[Any]:
    """All leaf values at ``path`` (lists fan out), accepting snake_case or camelCase names."""
    if not path:
        return resource if isinstance(resource, list) else [resource]
    if isinstance(resource, list):
        return [v for item in resource for v in _resolve(item, path)]
    if not isinstance(resource, dict):
        return []
    key = path[0]
    if key not in resource:
        key = _camel(key)
    if key not in resource:
        return []
    return _resolve(resource[key], path[1:])


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _term_matcher(path: str, op: str, value: str) -> Callable[[dict[str, Any]], bool]:
    parts = path.split(".")
    if op in ("eq", "ne"):
        try:
            rx = re.compile(value)
        except re.error as e:
            raise FilterError(f"bad regex {value!r}: {e}") from e

    def compare(v: Any) -> bool:
        s = _scalar(v)
        if op == "=":
            return fnmatch.fnmatchcase(s, value) if "*" in value else s == value
        if op == ":":
            if value == "*":
                return v not in (None, "", [], {})
            return value in s if isinstance(v, str) else s == value
        if op == "eq":
            return rx.fullmatch(s) is not None
        try:
            a, b = float(s), float(value)
        except ValueError:
            a, b = s, value  # type: ignore[assignment]
        return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]  # type: ignore[operator]

    def match(resource: dict[str, Any]) -> bool:
        values = _resolve(resource, parts)
        if op == "!=":
            return not any(_scalar(v) == value or ("*" in value and fnmatch.fnmatchcase(
                _scalar(v), value)) for v in values)
        if op == "ne":
            return not any(rx.fullmatch(_scalar(v)) for v in values)
        if op == ":" and isinstance(values, list) and values and isinstance(values[0], dict):
            return value == "*" or any(value in d for d in values)  # map key presence
        return any(compare(v) for v in values)

    return match


def parse_filter(text: str, *, each_in_parentheses: bool = False) -> Callable[[dict[str, Any]], bool]:
    """Compile a list filter to a predicate over a resource's camelCase JSON dict.

    ``each_in_parentheses``: Compute's rule that several expressions each stand in parentheses
    (every compute list passes it); off for the other stand-ins that borrow this parser (Cloud
    Build's ``list_builds``), whose APIs do not have that rule."""
    if not text or not text.strip():
        return lambda _r: True
    return _FilterParser(text.strip(), each_in_parentheses).parse()
