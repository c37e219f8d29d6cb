"""Names with any bytes: carried as the file system's bytes, portable in JSON, shown escaped."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from medgrit.core.fsnames import escape_name, from_portable, is_clean, name_bytes, to_portable
from medgrit.core.ids import pseudonymise_case
from medgrit.schemas.config import BuildConfig

raw_names = st.binary(min_size=1, max_size=40).filter(lambda b: b"\x00" not in b and b"/" not in b)


@given(raw_names)
def test_name_bytes_are_the_file_system_bytes(raw: bytes) -> None:
    assert name_bytes(os.fsdecode(raw)) == raw


@given(raw_names)
def test_portable_form_is_valid_utf8_and_round_trips(raw: bytes) -> None:
    name = os.fsdecode(raw)
    portable = to_portable(name)
    portable.encode("utf-8")  # no lone surrogates left
    assert json.loads(json.dumps(portable, ensure_ascii=False)) == portable
    assert from_portable(portable) == name


@given(st.text(max_size=40))
def test_clean_names_are_unchanged(text: str) -> None:
    if is_clean(text):
        assert to_portable(text) == text
        assert escape_name(text) == text


def test_undecodable_bytes_are_shown_as_escapes() -> None:
    assert escape_name(os.fsdecode(b"scan\xff\xfe.png")) == "scan\\xff\\xfe.png"


def test_case_ids_of_undecodable_names_are_distinct_and_stable() -> None:
    key = b"k" * 32
    a = pseudonymise_case("D", os.fsdecode(b"case\xff"), key)
    b = pseudonymise_case("D", os.fsdecode(b"case\xfe"), key)
    assert a != b and a == pseudonymise_case("D", os.fsdecode(b"case\xff"), key)


def test_build_config_carries_undecodable_paths_through_json(tmp_path: Path) -> None:
    source = os.fsdecode(b"images:" + os.fsencode(tmp_path) + b"/src\xff")
    out = os.fsdecode(os.fsencode(tmp_path) + b"/out\xfd")
    config = BuildConfig(sources=[source], out=out)
    text = json.dumps(config.model_dump(mode="json"), ensure_ascii=False)
    text.encode("utf-8")
    again = BuildConfig(**json.loads(text))
    assert again.sources == [source] and again.out == out
    assert os.fsencode(again.out).endswith(b"out\xfd")
