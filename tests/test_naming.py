"""Run ids and the GCE names derived from them: validity, stability and no collisions."""

from __future__ import annotations

import unicodedata

import re
import string

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from runner.naming import (
    GCE_NAME_RE,
    LABEL_VALUE_RE,
    InvalidRunId,
    id_hash,
    label_value,
    resource_name,
    validate_run_id,
)

# --- strategies -----------------------------------------------------------------------------


def _is_valid(run_id: str) -> bool:
    try:
        validate_run_id(run_id)
    except InvalidRunId:
        return False
    return True


_any_char = st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/")
_any_text_id = st.text(_any_char, min_size=1, max_size=128)
_slug_id = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,126}[a-z0-9])?", fullmatch=True)
_near_slug_id = st.text(string.ascii_letters + string.digits + "-_. ", min_size=1, max_size=128)
_long_id = st.text(string.ascii_lowercase + "-", min_size=60, max_size=128)

run_ids = st.one_of(_any_text_id, _slug_id, _near_slug_id, _long_id).filter(_is_valid)
attempts = st.integers(min_value=0, max_value=10**6)


def _assert_gce_name(name: str) -> None:
    assert GCE_NAME_RE.fullmatch(name), name
    assert len(name) <= 63, name


# --- validate_run_id ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "run_id",
    [
        "demo-1", "Run_1", "run 1", "v1.2.3", "...", ".hidden", "日本語の実験", "Café",
        "a" * 128, "x",
    ],
)
def test_ordinary_ids_are_accepted_and_returned_unchanged(run_id: str) -> None:
    assert validate_run_id(run_id) == run_id


@pytest.mark.parametrize(
    ("run_id", "complaint"),
    [
        ("", "empty"),
        ("a/b", "'/'"),
        ("/", "'/'"),
        ("line\nbreak", "control character"),
        ("tab\there", "control character"),
        ("nul\x00", "control character"),
        ("del\x7f", "control character"),
        ("   ", "only whitespace"),
        ("\u3000", "only whitespace"),
        (".", "special path name"),
        ("..", "special path name"),
        ("a" * 129, "129 characters long, the limit is 128"),
        ("\U0001F600" * 100, "400 bytes in UTF-8, the limit is 200"),
        ("\u00e9" * 128, "256 bytes in UTF-8"),
        ("a\u202eb", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("zero\u200bwidth", "U+200B"),
        ("\ufeffbom", "U+FEFF"),
        ("line\u2028sep", "line separator"),
        ("private\ue000", "private-use"),
        (" leading", "starts or ends with whitespace"),
        ("trailing ", "starts or ends with whitespace"),
        ("trailing\u3000", "starts or ends with whitespace"),
    ],
)
def test_unusable_ids_are_rejected_with_a_one_line_reason(run_id: str, complaint: str) -> None:
    with pytest.raises(InvalidRunId) as err:
        validate_run_id(run_id)
    message = str(err.value)
    assert complaint in message
    assert "allowed:" in message
    assert "\n" not in message


def test_invalid_run_id_is_a_value_error() -> None:
    assert issubclass(InvalidRunId, ValueError)


def test_a_non_string_run_id_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="must be a string"):
        validate_run_id(42)  # type: ignore[arg-type]


@given(st.text(max_size=200))
def test_validation_accepts_exactly_the_documented_ids(run_id: str) -> None:
    expected_ok = (
        0 < len(run_id) <= 128
        and "/" not in run_id
        and len(run_id.encode("utf-8", "surrogatepass")) <= 200
        and not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for c in run_id)
        and run_id == run_id.strip()
        and run_id not in (".", "..")
    )
    assert _is_valid(run_id) == expected_ok


@pytest.mark.parametrize("bad", ["", "a/b", ".."])
def test_names_and_labels_refuse_invalid_ids(bad: str) -> None:
    with pytest.raises(InvalidRunId):
        resource_name(bad)
    with pytest.raises(InvalidRunId):
        label_value(bad)


# --- resource_name --------------------------------------------------------------------------


@given(run_ids, st.one_of(st.none(), attempts))
@example("a" * 128, 10**6)
@example("日本語", 0)
@example("-", None)
@example("A", None)
def test_resource_name_is_always_a_valid_gce_name(run_id: str, attempt: int | None) -> None:
    _assert_gce_name(resource_name(run_id, attempt))


@given(run_ids, st.one_of(st.none(), attempts))
def test_resource_name_is_stable(run_id: str, attempt: int | None) -> None:
    assert resource_name(run_id, attempt) == resource_name(run_id, attempt)


def test_resource_name_does_not_depend_on_the_process() -> None:
    # A fixed value: the hash must be sha256-based, not Python's per-process hash().
    assert resource_name("My Run", 2) == f"runner-my-run--{id_hash('My Run')}-a2"
    assert id_hash("My Run") == "2635e181"


@given(run_ids, run_ids, st.one_of(st.none(), attempts))
def test_different_run_ids_get_different_names(a: str, b: str, attempt: int | None) -> None:
    assume(a != b)
    assert resource_name(a, attempt) != resource_name(b, attempt)


@st.composite
def _similar_pairs(draw: st.DrawFn) -> tuple[str, str]:
    """Two ids that sanitize alike: the pairs most likely to collide."""
    a = draw(run_ids)
    tweak = draw(
        st.sampled_from(
            [
                str.upper,
                str.lower,
                lambda s: s.replace("-", "_"),
                lambda s: s.replace("-", " "),
                lambda s: s + "-",
                lambda s: "-" + s,
                lambda s: s.replace("-", "--", 1),
                lambda s: s[:-1] + "!",
            ]
        )
    )
    b = tweak(a)
    assume(a != b and _is_valid(b))
    return a, b


@given(_similar_pairs(), st.one_of(st.none(), attempts))
def test_ids_that_sanitize_alike_still_get_different_names(
    pair: tuple[str, str], attempt: int | None
) -> None:
    a, b = pair
    assert resource_name(a, attempt) != resource_name(b, attempt)
    assert label_value(a) != label_value(b)


def test_case_and_separator_variants_of_one_id_all_differ() -> None:
    variants = ["Run_1", "run-1", "run 1", "RUN-1", "run_1", "run--1", "-run-1", "run-1-"]
    names = {resource_name(v, 3) for v in variants}
    labels = {label_value(v) for v in variants}
    assert len(names) == len(variants)
    assert len(labels) == len(variants)
    assert resource_name("run-1", 3) == "runner-run-1-a3"


def test_long_ids_that_share_a_long_prefix_get_different_names() -> None:
    base = "experiment-" + "x" * 100
    a, b = base + "-seed-1", base + "-seed-2"
    assert resource_name(a, 7) != resource_name(b, 7)
    assert label_value(a) != label_value(b)
    _assert_gce_name(resource_name(a, 7))
    assert len(resource_name(a, 7)) == 63


@given(run_ids, attempts)
def test_the_attempt_suffix_survives_truncation(run_id: str, attempt: int) -> None:
    assert resource_name(run_id, attempt).endswith(f"-a{attempt}")


@given(run_ids, attempts, attempts)
def test_different_attempts_of_one_run_get_different_names(run_id: str, n: int, m: int) -> None:
    assume(n != m)
    assert resource_name(run_id, n) != resource_name(run_id, m)


@given(run_ids, attempts)
def test_names_with_and_without_an_attempt_do_not_collide(run_id: str, attempt: int) -> None:
    # "demo-a2" (no attempt) must not be mistaken for attempt 2 of "demo".
    assert resource_name(run_id) != resource_name(run_id, attempt)


def test_an_id_that_looks_like_an_attempt_suffix_is_not_confused_with_one() -> None:
    assert resource_name("demo-a2") != resource_name("demo", 2)


@given(_slug_id, attempts)
def test_no_id_without_an_attempt_names_like_an_attempt_of_another(stem: str, n: int) -> None:
    lookalike = f"{stem}-a{n}"
    assume(len(lookalike) <= 128)
    assert resource_name(lookalike) != resource_name(stem, n)


@pytest.mark.parametrize(
    ("run_id", "attempt", "name"),
    [
        ("demo-1", 2, "runner-demo-1-a2"),
        ("demo-1", None, "runner-demo-1"),
        ("train-resnet50", 0, "runner-train-resnet50-a0"),
        ("2024-sweep", 1, "runner-2024-sweep-a1"),
    ],
)
def test_simple_ids_map_readably_without_a_hash(
    run_id: str, attempt: int | None, name: str
) -> None:
    assert resource_name(run_id, attempt) == name


def test_ids_that_needed_changes_keep_a_readable_part_and_gain_a_hash() -> None:
    name = resource_name("My Experiment #3", 1)
    assert re.fullmatch(r"runner-my-experiment-3--[0-9a-f]{8}-a1", name)


def test_ids_with_no_ascii_at_all_are_named_by_hash_alone() -> None:
    assert re.fullmatch(r"runner--[0-9a-f]{8}-a0", resource_name("日本語", 0))


def test_accented_letters_are_kept_as_their_base_letter() -> None:
    assert resource_name("Café", 0).startswith("runner-cafe--")


def test_a_custom_prefix_is_used() -> None:
    assert resource_name("demo", 1, prefix="job") == "job-demo-a1"


@pytest.mark.parametrize("prefix", ["", "Runner", "1abc", "run_", "end-"])
def test_an_invalid_prefix_is_rejected(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        resource_name("demo", prefix=prefix)


def test_a_prefix_too_long_to_leave_room_is_rejected() -> None:
    with pytest.raises(ValueError, match="shorter prefix"):
        resource_name("demo", 10**6, prefix="p" * 50)


@pytest.mark.parametrize("attempt", [-1, True, 1.0, "1"])
def test_a_bad_attempt_is_rejected(attempt: object) -> None:
    with pytest.raises(ValueError, match="non-negative integer"):
        resource_name("demo", attempt)  # type: ignore[arg-type]


# --- label_value ----------------------------------------------------------------------------


@given(run_ids)
@example("a" * 128)
@example("日本語")
def test_label_value_is_always_a_valid_ascii_label(run_id: str) -> None:
    value = label_value(run_id)
    assert LABEL_VALUE_RE.fullmatch(value), value
    assert value.isascii()
    assert value


@given(run_ids, run_ids)
def test_different_run_ids_get_different_labels(a: str, b: str) -> None:
    assume(a != b)
    assert label_value(a) != label_value(b)


@given(run_ids)
def test_label_value_is_stable(run_id: str) -> None:
    assert label_value(run_id) == label_value(run_id)


@pytest.mark.parametrize("run_id", ["demo-1", "run_1", "a_b-c", "42"])
def test_simple_ids_are_their_own_label(run_id: str) -> None:
    assert label_value(run_id) == run_id


def test_ids_that_needed_changes_get_a_hashed_label() -> None:
    assert re.fullmatch(r"run-1--[0-9a-f]{8}", label_value("Run 1"))
