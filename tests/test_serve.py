"""``medgrit serve``: scheduled builds served to a real Prefect server.

The config file's mistakes are one line and exit code 2 before Prefect is reached. Against the
session's server (``prefect server start --no-services``; the serving process polls for runs
itself), one ``medgrit serve`` process serves two deployments of image-folder sources the tests
write: a run builds the dataset, a second run after the source gained cases appends them as new
shards, and a failed run retried with ``prefect flow-run retry`` finishes the dataset without
touching the shards it had done. The committed ``prefect.yaml`` is what ``--prefect-yaml`` writes
from ``examples/service.toml``, and ``prefect deploy --all`` registers it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_cli
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CRON = "15 3 * * *"
MEDGRIT = shutil.which("medgrit") or "medgrit"


def _offline_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["MEDGRIT_KEY_FILE"] = str(tmp_path / "key" / "pseudonym.key")
    return env


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GOOD_TOML = """
[[deployments]]
name = "nightly"
cron = "0 2 * * *"
[deployments.config]
sources = ["demo"]
out = "ds"
"""


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "bad-field.toml",
            GOOD_TOML + 'plane = "diagonal"\n',
            "deployments[0].config.plane: Input should be 'axial', 'coronal' or 'sagittal'",
        ),
        ("typo.toml", GOOD_TOML + "seeed = 3\n", "deployments[0].config.seeed: Extra inputs"),
        (
            "cron.toml",
            GOOD_TOML.replace("0 2 * * *", "61 2 * * *"),
            "deployments[0].cron: Invalid cron string",
        ),
        (
            "zone.yaml",
            "deployments:\n- {name: a, cron: '0 2 * * *', timezone: Mars/Olympus, "
            "config: {out: ds}}\n",
            "deployments[0].timezone: Invalid timezone",
        ),
        (
            "flow.yaml",
            "deployments:\n- {name: a, flow: finetune, cron: '0 2 * * *', config: {out: ds}}\n",
            "deployments[0].flow: unknown flow 'finetune'; use one of: build",
        ),
        (
            "names.yml",
            "deployments:\n- {name: a, cron: '0 2 * * *', config: {out: one}}\n"
            "- {name: a, cron: '0 3 * * *', config: {out: two}}\n",
            "deployments[1].name: 'a' is already the name of deployments[0]",
        ),
        (
            "outs.yaml",
            "deployments:\n- {name: a, cron: '0 2 * * *', config: {out: ds}}\n"
            "- {name: b, cron: '0 3 * * *', config: {out: ./ds}}\n",
            "deployments[1].config.out:",
        ),
        ("none.toml", "deployments = []\n", "deployments: List should have at least 1 item"),
        ("list.yaml", "- a\n- b\n", "the file must hold a `deployments` list"),
        ("broken.toml", "[[deployments]\nname = 1\n", "is not valid TOML"),
        ("broken.yaml", "deployments:\n  - name: [a\n", "is not valid YAML"),
        ("service.json", "{}", "must be a .toml, .yaml or .yml file"),
    ],
)
def test_config_errors_are_one_line_naming_the_field(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = _write(tmp_path / name, text)
    done = run_cli("serve", str(path), env=_offline_env(tmp_path), timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medgrit: error: "), done.stderr
    assert expected in lines[0]
    assert not (tmp_path / "ds").exists() and not (tmp_path / "key").exists()


def test_a_missing_file_and_a_missing_server_are_one_line(tmp_path: Path) -> None:
    env = _offline_env(tmp_path)
    done = run_cli("serve", str(tmp_path / "nope.toml"), env=env, timeout=120)
    assert done.returncode == 2 and "nope.toml: no such file" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

    path = _write(tmp_path / "service.toml", GOOD_TOML)
    done = run_cli("serve", str(path), env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "prefect server start --host 127.0.0.1" in line
    assert "export PREFECT_API_URL=http://127.0.0.1:4200/api" in line

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    folder = _images(tmp_path / "src", ["c0"])
    path = _write(tmp_path / "local.yaml", _service_yaml([("a", folder, "ds")]))
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    done = run_cli("serve", str(path), env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"the Prefect server at http://127.0.0.1:{port}/api does not answer" in line


def test_sources_and_out_are_checked_like_build(tmp_path: Path) -> None:
    env = {**_offline_env(tmp_path), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    path = _write(tmp_path / "s.yaml", _service_yaml([("a", tmp_path / "missing", "ds")]))
    done = run_cli("serve", str(path), env=env, timeout=120)
    assert done.returncode == 2 and "missing" in done.stderr, done.stderr
    folder = _images(tmp_path / "src", ["c0"])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    path = _write(tmp_path / "s.yaml", _service_yaml([("a", folder, "taken")]))
    done = run_cli("serve", str(path), env=env, timeout=120)
    assert done.returncode == 2 and "holds no medgrit dataset" in done.stderr, done.stderr
    path = _write(tmp_path / "s.yaml", _service_yaml([("a", folder, "src/inside")]))
    done = run_cli("serve", str(path), env=env, timeout=120)
    assert done.returncode == 2 and "lies inside the source folder" in done.stderr


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("missing source", "source path does not exist"),
        ("out inside the source", "lies inside the source folder"),
        ("out in /proc", "config.out /proc/medgrit-serve-test/ds cannot be written in /proc"),
        ("out is a file", "is a file, not a folder"),
    ],
)
def test_every_deployment_is_checked_like_build_when_served_or_written(
    tmp_path: Path, problem: str, expected: str
) -> None:
    env = {**_offline_env(tmp_path), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    good = _images(tmp_path / "good-src", ["c0"])
    (tmp_path / "a-file").write_text("mine")
    source, out = {
        "missing source": (tmp_path / "missing", "ds"),
        "out inside the source": (good, "good-src/ds"),
        "out in /proc": (good, "/proc/medgrit-serve-test/ds"),
        "out is a file": (good, "a-file"),
    }[problem]
    path = _write(tmp_path / "s.yaml", _service_yaml([("a", good, "a-ds"), ("b", source, out)]))
    for extra in ([], ["--prefect-yaml", str(tmp_path / "prefect.yaml")]):
        done = run_cli("serve", str(path), *extra, env=env, timeout=120)
        assert done.returncode == 2, (extra, done.stderr)
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"medgrit: error: {path}: deployments[1] (b): "), line
        assert expected in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "good-src", "s.yaml"]
    assert (tmp_path / "a-file").read_text() == "mine"


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    from medgrit.cli.serve import load_service_config

    (tmp_path / "conf").mkdir()
    path = _write(
        tmp_path / "conf" / "s.toml",
        GOOD_TOML.replace('["demo"]', '["demo", "images:../data/x"]') + 'key_file = "~/k.key"\n',
    )
    (deployment,) = load_service_config(path).deployments
    assert deployment.config.sources == ["demo", f"images:{tmp_path / 'conf' / '../data/x'}"]
    assert deployment.config.out == str(tmp_path / "conf" / "ds")
    assert deployment.config.key_file == str(Path("~/k.key").expanduser())
    assert deployment.all_tags == ["medgrit"]


def test_the_committed_prefect_yaml_is_what_the_example_gives(
    tmp_path: Path, demo_dir: Path
) -> None:
    written = tmp_path / "prefect.yaml"
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    done = subprocess.run(
        [MEDGRIT, "serve", "examples/service.toml", "--prefect-yaml", "prefect.yaml"],
        env={**_offline_env(tmp_path), "MEDGRIT_DEMO_DIR": str(demo_dir)},  # its demo source
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # Generated next to a copy of examples/, as the committed one is next to the original.
    committed = (ROOT / "prefect.yaml").read_text()
    assert written.read_text() == committed
    (entry,) = yaml.safe_load(committed)["deployments"]
    assert entry["entrypoint"] == "flows/build.py:build_dataset"
    assert entry["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC"}]
    assert entry["work_pool"]["name"] == "medgrit"
    assert entry["parameters"]["config"]["out"] == "datasets/demo-nightly"


def test_prefect_deploy_registers_the_committed_prefect_yaml(cli_env: dict[str, str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {**cli_env, "PREFECT_CLI_PROMPT": "false"}
    prefect = [sys.executable, "-m", "prefect"]
    pool = subprocess.run(
        [*prefect, "work-pool", "create", "medgrit", "--type", "process", "--overwrite"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = subprocess.run(
        [*prefect, "--no-prompt", "deploy", "--all"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    with (
        temporary_settings(updates={PREFECT_API_URL: cli_env["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        deployment = client.read_deployment_by_name("build_dataset/demo-nightly")
    (schedule,) = deployment.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.active
    assert deployment.work_pool_name == "medgrit"
    assert set(deployment.tags) == {"medgrit", "demo"}
    assert deployment.parameters["config"]["sources"] == ["demo"]
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy == "CANCEL_NEW"


def test_the_example_automation_is_accepted_by_the_server(cli_env: dict[str, str]) -> None:
    from prefect.blocks.notifications import SlackWebhook
    from prefect.events.schemas.automations import AutomationCore
    from prefect.settings import PREFECT_API_URL, temporary_settings

    text = (ROOT / "examples" / "automation.yaml").read_text()
    with temporary_settings(updates={PREFECT_API_URL: cli_env["PREFECT_API_URL"]}):
        block_id = SlackWebhook(url="https://hooks.slack.com/services/T0/B0/XYZ").save(
            "medgrit-alerts", overwrite=True
        )
    filled = text.replace("BLOCK_DOCUMENT_ID", str(block_id))
    automation = AutomationCore.model_validate(yaml.safe_load(filled))
    assert automation.trigger.expect == {"prefect.flow-run.Failed"}
    tmp = ROOT / "examples" / ".automation-test.yaml"
    try:
        tmp.write_text(filled)
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "automation", "create", "--from-file", str(tmp)],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        tmp.unlink(missing_ok=True)
    assert done.returncode == 0 and "Created automation" in done.stdout, done.stdout


# -- serving against the real server ------------------------------------------------------------


def _images(root: Path, cases: list[str]) -> Path:
    """An ``images:`` source of tiny endoscopy photographs, one case each, with a polyp mask."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    meta = {"modality": "endoscopy", "labels": {"1": "polyp"}, "masks": "label_map"}
    (root / "labels.json").write_text(json.dumps(meta))
    for case in cases:
        seed = sum(map(ord, case))
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            root / "images" / f"{case}.png"
        )
        mask = np.zeros((48, 64), dtype=np.uint8)
        y, x = 4 + seed % 20, 4 + seed % 30
        mask[y : y + 12, x : x + 16] = 1
        Image.fromarray(mask).save(root / "masks" / f"{case}.png")
    return root


def _service_yaml(entries: list[tuple[str, Path, str]]) -> str:
    deployments = [
        {
            "name": name,
            "flow": "build",
            "cron": CRON,
            "timezone": "Europe/Berlin",
            "tags": ["nightly"],
            "description": f"test {name}",
            "config": {"sources": [f"images:{source}"], "out": out, "cases_per_shard": 1},
        }
        for name, source, out in entries
    ]
    return yaml.safe_dump({"deployments": deployments})


def _manifest(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())


def _shards(out: Path) -> dict[str, dict]:
    return {s["id"]: s for s in _manifest(out)["shards"]}


class Served:
    def __init__(self, root: Path, url: str, proc: subprocess.Popen, log: Path) -> None:
        self.root, self.url, self.proc, self.log = root, url, proc, log

    def run(self, name: str, timeout: float = 300):
        from prefect.deployments import run_deployment

        # a state read each second, not Prefect's default five: the run is seen as it ends
        return run_deployment(f"build_dataset/{name}", timeout=timeout, poll_interval=1)


@pytest.fixture(scope="module")
def served(cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = tmp_path_factory.mktemp("served")
    grow = _images(root / "grow-src", ["case-a", "case-b", "case-c"])
    retry = _images(root / "retry-src", ["r-a", "r-b", "r-c"])
    config = _write(
        root / "service.yaml",
        _service_yaml([("grow", grow, "grow-ds"), ("retry", retry, "retry-ds")]),
    )
    log = root / "serve.log"
    env = {**cli_env, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    with log.open("w") as sink:  # a file, not a pipe: Prefect's logs would fill a pipe
        proc = subprocess.Popen(
            [MEDGRIT, "serve", str(config)], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        with temporary_settings(updates={PREFECT_API_URL: cli_env["PREFECT_API_URL"]}):
            deadline = time.monotonic() + 240
            with get_client(sync_client=True) as client:
                while True:
                    try:
                        client.read_deployment_by_name("build_dataset/retry")
                        break
                    except ObjectNotFound:
                        pass
                    assert proc.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(1)
            yield Served(root, cli_env["PREFECT_API_URL"], proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_registers_each_deployment_with_its_schedule_and_tags(served: Served) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("build_dataset/grow")
    (schedule,) = deployment.schedules
    assert schedule.schedule.cron == CRON and schedule.schedule.timezone == "Europe/Berlin"
    assert schedule.active and not deployment.paused
    assert set(deployment.tags) == {"medgrit", "nightly"}
    assert deployment.description == "test grow"
    # One run at a time: a run due while the last still builds is cancelled, not failed.
    assert deployment.global_concurrency_limit is not None
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert deployment.parameters["config"]["out"] == str(served.root / "grow-ds")
    line = f"serving grow: build at cron '{CRON}' (Europe/Berlin) into {served.root / 'grow-ds'}"
    assert line in served.log.read_text().splitlines()


def test_a_scheduled_build_of_a_growing_source_appends_the_new_cases(served: Served) -> None:
    import pyarrow.parquet as pq

    out = served.root / "grow-ds"
    run = served.run("grow")
    assert run.state.is_completed(), served.log.read_text()[-3000:]
    manifest = _manifest(out)
    assert manifest["status"] == "complete" and manifest["totals"]["rows"]["images"] == 3
    before = _shards(out)

    _images(served.root / "grow-src", ["case-d", "case-e"])
    run = served.run("grow")
    assert run.state.is_completed(), served.log.read_text()[-3000:]
    manifest = _manifest(out)
    assert manifest["status"] == "complete" and manifest["totals"]["rows"]["images"] == 5
    after = _shards(out)
    for shard_id, old in before.items():  # old shards: the same ids, files, hashes and splits
        assert after[shard_id]["files"] == old["files"]
        assert after[shard_id]["cases"] == old["cases"]
    new = [s for i, s in after.items() if i not in before]
    assert sorted(c["case"] for s in new for c in s["cases"]) == ["case-d", "case-e"]
    case_ids = [
        case_id
        for path in sorted((out / "images").glob("*.parquet"))
        for case_id in set(pq.read_table(path, columns=["case_id"])["case_id"].to_pylist())
    ]
    assert len(case_ids) == len(set(case_ids)) == 5


def test_a_dataset_of_other_settings_is_refused(served: Served, cli_env: dict[str, str]) -> None:
    text = _service_yaml([("other", served.root / "grow-src", str(served.root / "grow-ds"))])
    path = _write(served.root / "other.yaml", text.replace("cases_per_shard: 1", "seed: 7"))
    done = run_cli("serve", str(path), env=cli_env, timeout=120)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "holds a dataset built with other settings (cases_per_shard, seed)" in line


def test_a_failed_scheduled_run_retried_finishes_the_dataset(served: Served) -> None:
    from prefect.client.orchestration import get_client

    out = served.root / "retry-ds"
    blocker = out / "images" / "part-00001.parquet"
    blocker.mkdir(parents=True)  # the shard's Parquet file cannot be put in place
    run = served.run("retry")
    assert run.state.is_failed(), served.log.read_text()[-3000:]
    shards = _shards(out)
    assert shards["00001"]["status"] == "failed"
    done = {i: s["files"] for i, s in shards.items() if s["status"] == "done"}
    assert set(done) == {"00000", "00002"}

    blocker.rmdir()
    retried = subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "retry", str(run.id)],
        env={**os.environ, "PREFECT_API_URL": served.url},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert retried.returncode == 0, retried.stdout + retried.stderr
    deadline = time.monotonic() + 300
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
        while state is None or not state.is_final():
            assert time.monotonic() < deadline, served.log.read_text()[-3000:]
            time.sleep(1)
            state = client.read_flow_run(run.id).state
    assert state.is_completed(), served.log.read_text()[-3000:]
    manifest = _manifest(out)
    assert manifest["status"] == "complete" and manifest["totals"]["rows"]["images"] == 3
    shards = _shards(out)
    for shard_id, files in done.items():
        assert shards[shard_id]["files"] == files  # same files, same sha256


def test_sigint_stops_serving_cleanly_and_pauses_the_schedules(served: Served) -> None:
    from prefect.client.orchestration import get_client

    served.proc.send_signal(signal.SIGINT)
    try:
        code = served.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        served.proc.kill()
        pytest.fail("medgrit serve did not stop within 60 s of SIGINT")
    log = served.log.read_text()
    assert code == 0, log[-3000:]
    stopping = log[log.rindex("Pausing all deployments") :]  # earlier: the failed shard's
    assert "medgrit: stopped serving" in stopping and "Traceback" not in stopping
    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name("build_dataset/grow").paused
