"""A build as the Prefect UI shows it: live artifacts, run names, tags, and the page itself.

Builds run against real Prefect servers: the session's (``prefect_server``) for the artifacts,
and for the UI one started here with services (task runs are recorded by a server service) and
``PREFECT_UI_API_URL`` set (the UI asks the API at that address; by default port 4200). The
page is rendered by a real headless Chromium.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pyarrow.parquet as pq
import pytest
from conftest import run_cli, running_prefect_server
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterName,
    FlowRunFilterTags,
)
from prefect.settings import PREFECT_API_URL, temporary_settings

from medgrit.flows import dashboard
from medgrit.flows.build import build_dataset
from medgrit.flows.dashboard import BuildDashboard, BuildTally, dataset_name
from medgrit.schemas.config import BuildConfig
from medgrit.schemas.manifest import Manifest, ShardEntry
from medgrit_testing.openai_server import ServerConfig, serve

API_KEY = "sk-medgrit-dashboard-test"
TASKS = ("VG", "ROC", "RC", "MIA")


@pytest.fixture
def on_server(prefect_server: str, demo_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MEDGRIT_DEMO_DIR", str(demo_dir))
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield prefect_server


def _artifacts(flow_run_id: UUID) -> list:
    """Every artifact (every version) of a flow run, the first created first."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return sorted(found, key=lambda a: a.created)


def _one(artifacts: list, key: str):
    """The flow run's artifact of ``key``: there is exactly one."""
    versions = [a for a in artifacts if a.key == key]
    assert len(versions) == 1, f"{len(versions)} artifacts {key}: {[a.key for a in artifacts]}"
    return versions[0]


def _table(artifact) -> list[dict]:
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def _qa_as_totals(rows: list[dict]) -> dict:
    return {r["modality"]: {t: r[t] for t in TASKS if r[t]} for r in rows}


def _counted_in_tables(out: Path) -> tuple[dict, dict]:
    """QA pairs per modality and task, and rejects per reason, counted in the dataset's Parquet
    files."""
    modality = {}
    for part in sorted((out / "images").glob("part-*.parquet")):
        table = pq.read_table(part, columns=["image_id", "modality"]).to_pylist()
        modality.update((row["image_id"], row["modality"]) for row in table)
    qa: dict = {}
    for part in sorted((out / "conversations").glob("part-*.parquet")):
        for row in pq.read_table(part, columns=["image_id", "qa"]).to_pylist():
            per = qa.setdefault(modality[row["image_id"]], {})
            for pair in row["qa"]:
                per[pair["task"]] = per.get(pair["task"], 0) + 1
    rejects: dict = {}
    for part in sorted((out / "rejects").glob("part-*.parquet")):
        for reason in pq.read_table(part, columns=["reason"]).column("reason").to_pylist():
            rejects[reason] = rejects.get(reason, 0) + 1
    return qa, rejects


def _assert_artifacts_equal_totals(artifacts: list, name: str, totals: dict) -> None:
    progress = _one(artifacts, f"medgrit-{name}-progress")
    assert progress.type == "progress" and float(progress.data) == 100.0
    rows = totals["rows"]
    description = progress.description
    assert f"{rows['images']} images" in description and f"{rows['rejects']} rejects" in description
    qa_pairs = sum(sum(per.values()) for per in totals["qa_by_modality_task"].values())
    assert f"{qa_pairs} QA pairs" in description
    qa = _table(_one(artifacts, f"medgrit-{name}-qa"))
    assert _qa_as_totals(qa) == totals["qa_by_modality_task"]
    assert all(r["total"] == sum(r[t] for t in TASKS) for r in qa)
    rejects = _table(_one(artifacts, f"medgrit-{name}-rejects"))
    assert {r["reason"]: r["count"] for r in rejects} == totals["rejects_by_reason"]


# -- pure parts ------------------------------------------------------------------------------


def test_dataset_names_are_valid_artifact_keys(tmp_path: Path) -> None:
    assert dataset_name(tmp_path / "My Dataset_v2") == "my-dataset-v2"
    assert dataset_name(tmp_path / ".ct-brain.medgrit-overwrite") == "ct-brain"  # --overwrite
    assert dataset_name(tmp_path / "Ünïcode!!") == "n-code"
    assert dataset_name(tmp_path / "___") == "dataset"
    assert len(dataset_name(tmp_path / ("x" * 300))) <= 60


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []

    def progress(self, key: str, percent: float, description: str) -> None:
        self.calls.append(("progress", key, percent))

    def table(self, key: str, rows: list[dict], description: str) -> None:
        self.calls.append(("table", key, rows))


def _entry(shard: str, status: str = "pending", images: int = 0) -> ShardEntry:
    entry: dict = {"id": shard, "cases": [], "status": status}
    if status == "done":
        entry.update(
            rows={"images": images, "regions": 0, "conversations": images, "rejects": 1},
            stats={
                "qa_by_modality_task": {"ct": {"VG": images, "MIA": 1}},
                "rejects_by_reason": {"empty_mask": 1},
            },
            tokens={"prompt": 0, "completion": 0},
        )
    return ShardEntry.model_validate(entry)


def _plan(entries: list[ShardEntry]) -> Manifest:
    return Manifest(schema_version=1, config={}, shards=entries)


def test_updates_are_throttled_but_the_first_and_last_shard_always_show() -> None:
    now = [0.0]
    sink = _Recorder()
    config = BuildConfig(out="/data/ds")
    board = BuildDashboard(config, sink, every_s=2.0, table_fraction=0.0, clock=lambda: now[0])
    manifest = _plan([_entry(f"{i:05d}") for i in range(100)])
    board(manifest, None)
    for entry in manifest.shards:
        now[0] += 0.1  # a shard every 0.1 s: 10 s in all
        board(manifest, _entry(entry.id, "done", images=2))
    progress = [c for c in sink.calls if c[0] == "progress"]
    qa = [c for c in sink.calls if c[1] == "medgrit-ds-qa"]
    assert 5 <= len(progress) <= 7  # the plan, every 2 s, the last shard
    assert progress[0][2] == 0.0 and progress[-1][2] == 100.0
    assert len(qa) == len(progress)
    assert qa[-1][2] == [{"modality": "ct", "VG": 200, "ROC": 0, "RC": 0, "MIA": 100, "total": 300}]
    board.flush()
    assert len([c for c in sink.calls if c[0] == "progress"]) == len(progress)  # nothing new


def test_eta_counts_only_shards_built_in_this_run() -> None:
    manifest = _plan(
        [_entry(f"{i}", "done", 4) for i in range(6)] + [_entry(f"{i}") for i in range(6, 10)]
    )
    tally = BuildTally.start(manifest)
    assert tally.done_before == 6 and tally.percent == 60.0 and tally.rows["images"] == 24
    assert tally.eta_s(30.0) is None  # no shard of this run yet: no pace
    tally.record(_entry("6", "done", 4))
    assert tally.eta_s(30.0) == 90.0  # 1 shard in 30 s, 3 left
    assert "6 done before this run" in tally.describe(30.0) and "ETA 1 min 30 s" in (
        tally.describe(30.0)
    )


# -- real builds -----------------------------------------------------------------------------


def test_a_build_publishes_live_artifacts_equal_to_its_totals(
    on_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard, "UPDATE_EVERY_S", 0.0)  # every shard: 7 publications
    monkeypatch.setattr(dashboard, "TABLE_EVERY_FRACTION", 0.0)
    out = tmp_path / "Dash Live"
    state = build_dataset(
        BuildConfig(out=str(out), max_images=24, images_per_shard=4), return_state=True
    )
    assert state.is_completed(), state.message
    manifest = json.loads((out / "dataset.json").read_text())
    shards = len(manifest["shards"])
    assert shards == 6 and manifest["status"] == "complete"
    flow_run_id = state.state_details.flow_run_id
    artifacts = _artifacts(flow_run_id)
    _assert_artifacts_equal_totals(artifacts, "dash-live", manifest["totals"])
    # One card per kind, created in this order (the summary last), the dashboard's updated in
    # place after each shard.
    kinds = ("progress", "qa", "rejects")
    assert [a.key for a in artifacts] == [
        *(f"medgrit-dash-live-{kind}" for kind in kinds),
        "medgrit-build-summary",
    ]
    assert all(a.updated > a.created for a in artifacts[:3])
    qa_by_modality, rejects_by_reason = _counted_in_tables(out)
    qa = _table(artifacts[1])
    assert _qa_as_totals(qa) == qa_by_modality
    assert sum(r["total"] for r in qa) == sum(sum(per.values()) for per in qa_by_modality.values())
    assert {r["reason"]: r["count"] for r in _table(artifacts[2])} == rejects_by_reason

    summary = _one(artifacts, "medgrit-build-summary").data
    assert "images: 24" in summary and "| ct |" in summary
    assert out.absolute().as_uri() in summary  # a link to the dataset folder
    assert "- shards: 6/6 done" in summary and "6 built, 0 failed, 0 done before" in summary

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
    assert run.name == "build dash-live"
    assert {"medgrit", "dataset:dash-live", "generator:template"} <= set(run.tags)


def test_a_resume_shows_the_whole_dataset_and_times_only_its_own_shards(
    on_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard, "UPDATE_EVERY_S", 3600.0)  # only the first and last shard
    out = tmp_path / "dash-resume"
    blocker = out / "images" / "part-00001.parquet"
    blocker.mkdir(parents=True)  # that shard fails: an infrastructure error
    config = BuildConfig(out=str(out), max_images=12, cases_per_shard=2)
    first = build_dataset(config, return_state=True)
    assert first.is_failed() and "00001" in first.message
    failed = _artifacts(first.state_details.flow_run_id)
    assert "(1 failed)" in _one(failed, "medgrit-dash-resume-progress").description

    blocker.rmdir()
    second = build_dataset(config, return_state=True)
    assert second.is_completed(), second.message
    manifest = json.loads((out / "dataset.json").read_text())
    artifacts = _artifacts(second.state_details.flow_run_id)
    _assert_artifacts_equal_totals(artifacts, "dash-resume", manifest["totals"])
    done_before = len(manifest["shards"]) - 1
    progress = _one(artifacts, "medgrit-dash-resume-progress")
    assert f"{done_before} done before this run" in progress.description
    with get_client(sync_client=True) as client:
        history = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["medgrit-dash-resume-qa"]))
        )
        [latest] = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(
                key=ArtifactCollectionFilterKey(any_=["medgrit-dash-resume-qa"])
            )
        )
    assert len(history) == 2  # the dataset's history: one version per run, under one key
    assert latest.latest_id == _one(artifacts, "medgrit-dash-resume-qa").id  # the resume's


def test_a_busy_dataset_ends_the_run_failed_with_one_line(on_server: str, tmp_path: Path) -> None:
    out = tmp_path / "dash-busy"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path\n"
            "from medgrit.adapters.store.dataset_dir import hold_dataset\n"
            f"with hold_dataset(Path({str(out)!r})):\n"
            "    print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        state = build_dataset(BuildConfig(out=str(out), max_images=2), return_state=True)
    finally:
        holder.communicate("", timeout=30)
    assert state.is_failed()
    assert "is being written by another medgrit process" in state.message
    assert "\n" not in state.message and "Traceback" not in state.message


@pytest.fixture(scope="module")
def llm_server():
    config = ServerConfig(rpm=3000, tpm=3_000_000, latency_ms=(5, 30), api_key=API_KEY)
    with serve(config) as server:
        yield server


@pytest.mark.slow
def test_an_llm_build_from_the_cli_shows_its_spend(
    llm_server, medgrit, prefect_server: str, tmp_path: Path
) -> None:
    out = tmp_path / "dash-llm"
    result = medgrit(
        *("build", "--out", str(out), "--max-images", "6", "--images-per-shard", "3"),
        *("--generator", "llm", "--llm-model", "test-model"),
        *("--llm-base-url", llm_server.base_url, "--llm-rpm", "3000", "--llm-timeout-s", "2"),
        env={"OPENAI_API_KEY": API_KEY},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "QA pairs" in result.stderr  # the per-shard line
    task_lines = [line for line in result.stderr.splitlines() if "Task run" in line]
    assert not [line for line in task_lines if "Finished in state Completed" in line]
    manifest = json.loads((out / "dataset.json").read_text())
    totals = manifest["totals"]
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=["build dash-llm"]),
                    tags=FlowRunFilterTags(all_=["dataset:dash-llm", "generator:llm"]),
                )
            )
        assert len(runs) == 1 and "model:test-model" in runs[0].tags
        artifacts = _artifacts(runs[0].id)
    _assert_artifacts_equal_totals(artifacts, "dash-llm", totals)
    [spend] = _table(_one(artifacts, "medgrit-dash-llm-llm"))
    llm = totals["llm"]
    assert llm["requests"] > 0 and llm["prompt"] > 0
    assert spend == {
        "requests": llm["requests"],
        "cache_hits": llm["cache_hits"],
        "prompt_tokens": llm["prompt"],
        "completion_tokens": llm["completion"],
        "estimated_cost_usd": llm["cost_usd"],
    }
    progress = _one(artifacts, "medgrit-dash-llm-progress").description
    assert f"LLM {llm['requests']} requests" in progress
    assert f"{llm['prompt']} prompt + {llm['completion']} completion tokens" in progress


# -- the page in the UI ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server whose UI reaches its API (``PREFECT_UI_API_URL``) and whose services
    record task runs; yields the API URL."""
    quiet = {
        "PREFECT_UI_API_URL": "{url}",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
    }
    home = tmp_path_factory.mktemp("prefect-ui-home")
    with running_prefect_server(home, quiet, services=True) as url:
        yield url


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            shutil.which("chromium") or "chromium",
            *("--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars"),
            *("--window-size=1400,1000", "--virtual-time-budget=20000"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_the_flow_run_page_shows_the_artifacts(
    ui_server: str, demo_dir: Path, tmp_path: Path
) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed: run scripts/install-test-data.sh")
    from PIL import Image

    out = tmp_path / "demo-ui"
    env = {**os.environ, "PREFECT_API_URL": ui_server, "MEDGRIT_DEMO_DIR": str(demo_dir)}
    result = run_cli(
        *("build", "--out", str(out), "--max-images", "24", "--images-per-shard", "4"), env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shards = [s["id"] for s in json.loads((out / "dataset.json").read_text())["shards"]]
    with temporary_settings(updates={PREFECT_API_URL: ui_server}):
        with get_client(sync_client=True) as client:
            [run] = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["build demo-ui"]))
            )
            deadline = time.monotonic() + 60
            while True:  # the server records task runs from their events, a moment later
                tasks = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
                )
                if len(tasks) >= len(shards) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
    assert sorted(t.name for t in tasks) == [f"build_shard-{s} (demo-ui)" for s in shards]
    assert all({"medgrit", "dataset:demo-ui", "generator:template"} <= set(t.tags) for t in tasks)
    assert {t.task_key.split("-")[0] for t in tasks} == {"build_shard"}

    page = f"{ui_server.removesuffix('/api')}/v2/runs/flow-run/{run.id}?tab=Artifacts"
    for _ in range(3):  # the single-page app renders once its API calls answer
        dom = _chromium("--dump-dom", page).stdout
        if "medgrit-demo-ui-progress" in dom:
            break
    assert "build demo-ui" in dom and "dataset:demo-ui" in dom
    for key in ("progress", "qa", "rejects"):
        assert f"medgrit-demo-ui-{key}" in dom, dom[-2000:]
    assert "24 images" in dom  # the progress artifact's description
    shot = tmp_path / "prefect-flow-run.png"
    _chromium(f"--screenshot={shot}", page)
    with Image.open(shot) as image:
        assert image.size == (1400, 1000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50  # a rendered page, not one colour
    if os.environ.get("MEDGRIT_SCREENSHOT_DIR"):
        target = Path(os.environ["MEDGRIT_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "prefect-flow-run.png")
