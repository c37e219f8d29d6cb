"""``medgrit build --generator llm`` end to end: the CLI in a subprocess, the real ``openai`` SDK,
and the OpenAI-compatible test server (``medgrit_testing.openai_server``) on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from medgrit.schemas.tables import TABLES
from medgrit_testing.openai_server import ServerConfig, serve

pytestmark = pytest.mark.slow

API_KEY = "sk-medgrit-test-7Q9xZ-do-not-leak"


@pytest.fixture(scope="module")
def llm_server():
    config = ServerConfig(rpm=3000, tpm=3_000_000, latency_ms=(5, 30), api_key=API_KEY)
    with serve(config) as server:
        yield server


def _rows(out: Path, table: str) -> list[dict]:
    return [
        row
        for part in sorted((out / table).glob("part-*.parquet"))
        for row in pq.read_table(part).to_pylist()
    ]


def _build(medgrit, server, out: Path, *extra: str, env: dict[str, str] | None = None):
    return medgrit(
        "build",
        "--out",
        str(out),
        "--max-images",
        "8",
        "--cases-per-shard",
        "3",
        "--generator",
        "llm",
        "--llm-model",
        "test-model",
        "--llm-base-url",
        server.base_url,
        "--llm-rpm",
        "3000",
        "--llm-tpm",
        "3000000",
        "--llm-timeout-s",
        "2",
        *extra,
        env=env or {"OPENAI_API_KEY": API_KEY},
    )


# Each fault mix of the provider, by test id. Timeouts and 5xx answers take one path (a retried
# infrastructure failure) and a cut answer another (asked again), so one build meets all four;
# each is counted, and its outcome checked, on its own.
FAULT_MIXES: dict[str, dict] = {
    "clean": {},
    "5xx_hangs_malformed": {
        "fail_500_rate": 0.1,
        "fail_503_rate": 0.1,
        "hang_rate": 0.1,
        "hang_s": 5.0,
        "malformed_json_rate": 0.3,
    },
    "invented_boxes": {"invented_box_rate": 0.4},
    "wrong_labels": {"wrong_label_rate": 0.4},
}
# What the provider's stats count for each fault of a mix.
FAULT_KINDS = {
    "fail_500_rate": "http_500",
    "fail_503_rate": "http_503",
    "hang_rate": "hang",
    "malformed_json_rate": "malformed_json",
    "invented_box_rate": "invented_box",
    "wrong_label_rate": "wrong_label",
}


def _fault_config(mix: str) -> ServerConfig:
    return ServerConfig(
        rpm=3000, tpm=3_000_000, latency_ms=(5, 30), api_key=API_KEY, seed=7, **FAULT_MIXES[mix]
    )


@dataclass(frozen=True)
class Built:
    """One build under a fault mix: its folder, the CLI's result and the provider's stats."""

    out: Path
    result: subprocess.CompletedProcess
    stats: dict


KEY_BLOCK = "medgrit-test-llm-key"


@pytest.fixture(scope="module")
def fault_build(
    llm_server, medgrit, prefect_server: str, tmp_path_factory
) -> Callable[[str], Built]:
    """The build of 8 images under a fault mix (:data:`FAULT_MIXES`), made once and shared by the
    tests that read it; tests that change a build change a copy. The clean build takes its key
    from a Prefect Secret block, with none in its environment; the others from OPENAI_API_KEY."""
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings

    done: dict[str, Built] = {}

    def get(mix: str) -> Built:
        if mix not in done:
            llm_server.configure(_fault_config(mix))
            llm_server.reset_stats()
            out = tmp_path_factory.mktemp(f"llm-{mix}") / "out"
            if mix == "clean":
                with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
                    Secret(value=API_KEY).save(KEY_BLOCK, overwrite=True)
                block = ("--llm-api-key-block", KEY_BLOCK)
                result = _build(medgrit, llm_server, out, *block, env={"OPENAI_API_KEY": ""})
            else:
                result = _build(medgrit, llm_server, out)
            done[mix] = Built(out, result, llm_server.stats())
        return done[mix]

    return get


@pytest.mark.parametrize("mix", list(FAULT_MIXES))
def test_llm_build_completes_under_each_fault_mix(fault_build, medgrit, mix: str) -> None:
    faults = FAULT_MIXES[mix]
    built = fault_build(mix)
    out, result, stats = built.out, built.result, built.stats
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LLM:" in result.stdout and "requests sent" in result.stdout
    validate = medgrit("validate", str(out))
    assert validate.returncode == 0, validate.stdout  # every accepted turn passes verification
    conversations = _rows(out, "conversations")
    assert conversations and all(c["generator"] == "llm" for c in conversations)
    assert all(c["prompt_tokens"] > 0 and c["prompt_hash"] for c in conversations)
    for rate in faults:
        if rate in FAULT_KINDS:  # each fault of the mix was met, and the build came through
            assert stats["faults"][FAULT_KINDS[rate]] > 0, (rate, stats)
    if not faults:
        assert sum(stats["faults"].values()) == 0, stats
    rejects = _rows(out, "rejects")
    if "malformed_json_rate" in faults:
        # A cut answer was asked for again, or its image rejected (nothing else here asks again).
        unreadable = [r for r in rejects if r["reason"] == "invalid_json"]
        assert unreadable or stats.get("feedback_requests", 0) > 0, stats
    if "invented_box_rate" in faults or "wrong_label_rate" in faults:
        # Bad answers were caught: asked again with the error fed back, or rejected.
        caught = [r for r in rejects if r["stage"] == "verify"]
        assert caught or stats.get("feedback_requests", 0) > 0, stats
    manifest = json.loads((out / "dataset.json").read_text())
    llm = manifest["totals"]["llm"]
    assert llm["requests"] >= len(conversations) and llm["prompt"] > 0


def test_resume_sends_no_request_twice(fault_build, llm_server, medgrit, tmp_path: Path) -> None:
    built = fault_build("invented_boxes")
    assert built.result.returncode == 0, built.result.stderr[-3000:]
    out = tmp_path / "out"
    shutil.copytree(built.out, out)
    llm_server.configure(_fault_config("invented_boxes"))
    manifest = json.loads((out / "dataset.json").read_text())
    lost = manifest["shards"][0]
    before = {t: _rows(out, t) for t in TABLES}
    for rel in lost["files"]:
        (out / rel).unlink()
    lost["status"] = "failed"
    (out / "dataset.json").write_text(json.dumps(manifest))
    sent = llm_server.stats()
    result = medgrit("resume", str(out), env={"OPENAI_API_KEY": API_KEY})
    assert result.returncode == 0, result.stderr[-3000:]
    stats = llm_server.stats()
    assert stats["duplicate_requests"] == sent["duplicate_requests"]
    assert stats["requests"] == sent["requests"]  # every answer came from the cache
    assert {t: _rows(out, t) for t in TABLES} == before
    again = json.loads((out / "dataset.json").read_text())
    assert again["totals"]["llm"]["cache_hits"] > 0


def test_api_key_is_never_written_or_logged(fault_build) -> None:
    built = fault_build("5xx_hangs_malformed")  # the key went with every retried request too
    result = built.result
    assert result.returncode == 0, result.stderr[-3000:]
    assert API_KEY not in result.stdout + result.stderr
    for path in built.out.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


def _llm_flags(base_url: str) -> tuple[str, ...]:
    return ("--generator", "llm", "--llm-model", "m", "--llm-base-url", base_url)


def test_wrong_key_is_a_clear_failure(llm_server, medgrit, tmp_path: Path) -> None:
    llm_server.configure(ServerConfig(api_key=API_KEY))
    result = medgrit(
        *("build", "--out", str(tmp_path / "out"), "--max-images", "2"),
        *_llm_flags(llm_server.base_url),
        env={"OPENAI_API_KEY": "sk-wrong"},
    )
    assert "sk-wrong" not in result.stdout + result.stderr
    # A refused key stops the build before the first shard, in one line; nothing to resume.
    assert result.returncode == 1
    assert "authentication_error" in result.stderr and "run the build again" in result.stderr


def test_batch_mode_gives_the_same_conversations(
    fault_build, llm_server, medgrit, tmp_path: Path
) -> None:
    online = fault_build("invented_boxes")
    assert online.result.returncode == 0, online.result.stderr[-3000:]
    llm_server.configure(_fault_config("invented_boxes"))  # the provider that answered online
    batch = tmp_path / "batch"
    result = _build(medgrit, llm_server, batch, "--llm-batch", "--llm-batch-poll-s", "0.2")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((batch / "dataset.json").read_text())
    assert any(s.get("batches") for s in manifest["shards"])  # batch ids are recorded
    assert _rows(batch, "conversations") == _rows(online.out, "conversations")
    assert _rows(batch, "rejects") == _rows(online.out, "rejects")


def test_api_key_from_a_prefect_secret_block(fault_build) -> None:
    built = fault_build("clean")  # --llm-api-key-block, and OPENAI_API_KEY empty
    result = built.result
    assert result.returncode == 0, result.stderr[-3000:]
    images = _rows(built.out, "images")
    assert images and len(_rows(built.out, "conversations")) == len(images)
    assert API_KEY not in result.stdout + result.stderr
