"""``medgrit build --generator llm`` end to end: the CLI in a subprocess, the real ``openai`` SDK,
and the OpenAI-compatible test server (``medgrit_testing.openai_server``) on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
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


def _build(medgrit, server, out: Path, *extra: str):
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
        "--llm-timeout-s",
        "2",
        *extra,
        env={"OPENAI_API_KEY": API_KEY},
    )


@pytest.mark.parametrize(
    "faults",
    [
        {},
        {"fail_500_rate": 0.15, "fail_503_rate": 0.15},
        {"hang_rate": 0.1, "hang_s": 5.0},
        {"malformed_json_rate": 0.3},
        {"invented_box_rate": 0.4},
        {"wrong_label_rate": 0.4},
    ],
    ids=["clean", "5xx", "hangs", "malformed", "invented_boxes", "wrong_labels"],
)
def test_llm_build_completes_under_each_fault_mix(
    llm_server, medgrit, tmp_path: Path, faults: dict
) -> None:
    llm_server.configure(
        ServerConfig(rpm=3000, tpm=3_000_000, latency_ms=(5, 30), api_key=API_KEY, seed=7, **faults)
    )
    llm_server.reset_stats()
    out = tmp_path / "out"
    result = _build(medgrit, llm_server, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LLM:" in result.stdout and "requests sent" in result.stdout
    validate = medgrit("validate", str(out))
    assert validate.returncode == 0, validate.stdout  # every accepted turn passes verification
    conversations = _rows(out, "conversations")
    assert conversations and all(c["generator"] == "llm" for c in conversations)
    assert all(c["prompt_tokens"] > 0 and c["prompt_hash"] for c in conversations)
    stats = llm_server.stats()
    injected = sum(stats["faults"].values())
    if faults:
        assert injected > 0, stats
    rejects = _rows(out, "rejects")
    if "invented_box_rate" in faults or "wrong_label_rate" in faults:
        # Bad answers were caught: asked again with the error fed back, or rejected.
        caught = [r for r in rejects if r["stage"] == "verify"]
        assert caught or stats.get("feedback_requests", 0) > 0, stats
    manifest = json.loads((out / "dataset.json").read_text())
    llm = manifest["totals"]["llm"]
    assert llm["requests"] >= len(conversations) and llm["prompt"] > 0


def test_resume_sends_no_request_twice(llm_server, medgrit, tmp_path: Path) -> None:
    llm_server.configure(
        ServerConfig(
            rpm=3000,
            tpm=3_000_000,
            latency_ms=(5, 30),
            api_key=API_KEY,
            seed=11,
            invented_box_rate=0.3,
        )
    )
    llm_server.reset_stats()
    out = tmp_path / "out"
    assert _build(medgrit, llm_server, out).returncode == 0
    manifest = json.loads((out / "dataset.json").read_text())
    lost = manifest["shards"][0]
    before = {t: _rows(out, t) for t in TABLES}
    for rel in lost["files"]:
        (out / rel).unlink()
    lost["status"] = "failed"
    (out / "dataset.json").write_text(json.dumps(manifest))
    sent = llm_server.stats()["requests"]
    result = medgrit("resume", str(out), env={"OPENAI_API_KEY": API_KEY})
    assert result.returncode == 0, result.stderr[-3000:]
    stats = llm_server.stats()
    assert stats["duplicate_requests"] == 0
    assert stats["requests"] == sent  # every answer came from the cache
    assert {t: _rows(out, t) for t in TABLES} == before
    again = json.loads((out / "dataset.json").read_text())
    assert again["totals"]["llm"]["cache_hits"] > 0


def test_api_key_is_never_written_or_logged(llm_server, medgrit, tmp_path: Path) -> None:
    llm_server.configure(ServerConfig(rpm=3000, tpm=3_000_000, api_key=API_KEY, fail_500_rate=0.2))
    out = tmp_path / "out"
    result = _build(medgrit, llm_server, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert API_KEY not in result.stdout + result.stderr
    for path in out.rglob("*"):
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


def test_batch_mode_gives_the_same_conversations(llm_server, medgrit, tmp_path: Path) -> None:
    llm_server.configure(
        ServerConfig(rpm=3000, tpm=3_000_000, api_key=API_KEY, seed=3, invented_box_rate=0.2)
    )
    online = tmp_path / "online"
    assert _build(medgrit, llm_server, online).returncode == 0
    batch = tmp_path / "batch"
    shutil.rmtree(batch, ignore_errors=True)
    result = _build(medgrit, llm_server, batch, "--llm-batch", "--llm-batch-poll-s", "0.2")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((batch / "dataset.json").read_text())
    assert any(s.get("batches") for s in manifest["shards"])  # batch ids are recorded
    assert _rows(batch, "conversations") == _rows(online, "conversations")
    assert _rows(batch, "rejects") == _rows(online, "rejects")


def test_api_key_from_a_prefect_secret_block(
    llm_server, medgrit, prefect_server: str, tmp_path: Path
) -> None:
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings

    llm_server.configure(ServerConfig(api_key=API_KEY))
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        Secret(value=API_KEY).save("medgrit-test-llm-key", overwrite=True)
    out = tmp_path / "out"
    result = medgrit(
        *("build", "--out", str(out), "--max-images", "3"),
        *_llm_flags(llm_server.base_url),
        "--llm-api-key-block",
        "medgrit-test-llm-key",
        env={"OPENAI_API_KEY": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_rows(out, "conversations")) == 3
    assert API_KEY not in result.stdout + result.stderr
