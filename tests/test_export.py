"""`medgrit export` and `medgrit predict-baseline` on a real (small) demo build.

The dataset is built once per module in-process; each format is exported once and read back
against the dataset's own tables: every turn of a split appears exactly once, boxes in the text
are the regions' boxes, sample names give back the modality, and PNGs are the table's bytes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import build_demo_dataset
from PIL import Image

from medgrit.adapters.export import records as export_records
from medgrit.adapters.export.records import ImageRef, iter_images, read_records
from medgrit.adapters.export.write import ExportOptions, export_dataset, write_predictions
from medgrit.adapters.store.validate import read_table
from medgrit.core.exports import (
    BIRD_MODALITY,
    BIRD_TEST_FILES,
    TextRegion,
    modality_of_name,
    qwen2vl_text,
    safe_dataset_name,
    sample_name,
)

PREFIX = re.compile(r"^Picture 1: <img>(?P<name>[^<]+)\.png</img>\n")
QWEN_BOX = re.compile(r"<box>\((\d+),(\d+)\),\((\d+),(\d+)\)</box>")
VG_ANSWER = r"<ref>[^<]+</ref><box>\(\d+,\d+\),\(\d+,\d+\)</box>"
QWEN2_BOX = re.compile(r"<\|box_start\|>\((\d+),(\d+)\),\((\d+),(\d+)\)<\|box_end\|>")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    return build_demo_dataset(tmp_path_factory.mktemp("export") / "ds", demo_dir, 80)


@pytest.fixture(scope="module")
def tables(dataset: Path) -> dict:
    images = {r["image_id"]: r for r in read_table(dataset, "images")}
    regions = {r["region_id"]: r for r in read_table(dataset, "regions")}
    names = {
        i: sample_name(r["modality"], r["dataset"], r["case_id"], r["plane"], r["slice_index"])
        for i, r in images.items()
    }
    turns: dict[str, Counter] = {"train": Counter(), "test": Counter()}
    for c in read_table(dataset, "conversations"):
        for q in c["qa"]:
            turns[c["split"]][(names[c["image_id"]], q["question"], q["answer"])] += 1
    by_name = {names[i]: r for i, r in images.items()}
    return {"images": by_name, "regions": regions, "turns": turns, "names": names}


@pytest.fixture(scope="module")
def exported(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    runs = {
        "bird": ("bird", ExportOptions()),
        "llava": ("llava", ExportOptions()),
        # the dataset's own text, to be compared with its tables (other boxes: test_export_boxes)
        "trl": ("trl", ExportOptions(boxes="qwen-vl")),
        "trl-jsonl": ("trl", ExportOptions(jsonl=True, boxes="qwen-vl")),
        "qwen2vl": ("qwen2vl", ExportOptions()),
        "hf": ("hf", ExportOptions(licences=("CC-BY-4.0", "SyntheticCTPhantom=CC0-1.0"))),
    }
    out = {}
    for key, (fmt, options) in runs.items():
        export_dataset(dataset, fmt, root / key, options)
        out[key] = root / key
    return out


def _region_boxes(tables: dict, name: str, field: str) -> set[tuple[int, ...]]:
    image_id = tables["images"][name]["image_id"]
    return {tuple(r[field]) for r in tables["regions"].values() if r["image_id"] == image_id}


def _conversation_turns(path: Path) -> Counter:
    got: Counter = Counter()
    for rec in json.loads(path.read_text()):
        turns = rec["conversations"]
        assert rec["image"] == f"images/{rec['id']}.png"  # relative to the JSON's folder
        assert (path.parent / rec["image"]).is_file()
        assert turns[0]["value"].startswith("<image>\n")
        assert all("<image>" not in t["value"] for t in turns[1:])
        for human, gpt in zip(turns[::2], turns[1::2], strict=True):
            assert (human["from"], gpt["from"]) == ("human", "gpt")
            got[(rec["id"], human["value"].removeprefix("<image>\n"), gpt["value"])] += 1
    return got


def test_dataset_has_both_splits_and_every_task(tables: dict) -> None:
    assert tables["turns"]["train"] and tables["turns"]["test"]


def test_bird_train_and_test_hold_every_turn_once(exported: dict, tables: dict) -> None:
    folder = exported["bird"]
    got: Counter = Counter()
    for rec in json.loads((folder / "train.json").read_text()):
        first = rec["conversations"][0][0]
        assert PREFIX.match(first)["name"] == rec["id"]
        for i, (q, a) in enumerate(rec["conversations"]):
            got[(rec["id"], PREFIX.sub("", q) if i == 0 else q, a)] += 1
    assert got == tables["turns"]["train"]
    test: Counter = Counter()
    for file in BIRD_TEST_FILES.values():
        for rec in json.loads((folder / file).read_text()):
            [[q, a]] = rec["conversations"]
            assert PREFIX.match(q)["name"] == rec["id"]
            test[(rec["id"], PREFIX.sub("", q), a)] += 1
    assert test == tables["turns"]["test"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["images", "train.json", *BIRD_TEST_FILES.values()]
    )


def test_bird_test_files_hold_their_task_only(exported: dict, dataset: Path, tables: dict) -> None:
    tasks = {}
    for c in read_table(dataset, "conversations"):
        for q in c["qa"]:
            tasks[(tables["names"][c["image_id"]], q["question"])] = q["task"]
    for task, file in BIRD_TEST_FILES.items():
        for rec in json.loads((exported["bird"] / file).read_text()):
            assert tasks[(rec["id"], PREFIX.sub("", rec["conversations"][0][0]))] == task


def test_bird_text_boxes_are_region_boxes(exported: dict, tables: dict) -> None:
    for rec in json.loads((exported["bird"] / "train.json").read_text()):
        boxes = _region_boxes(tables, rec["id"], "bbox_1000")
        for q, a in rec["conversations"]:
            for m in QWEN_BOX.finditer(q + a):
                assert tuple(int(v) for v in m.groups()) in boxes


def test_names_parse_back_to_the_modality(tables: dict) -> None:
    for name, image in tables["images"].items():
        assert modality_of_name(name) == image["modality"]
        assert name.split("_")[0] == BIRD_MODALITY[image["modality"]]
        assert image["case_id"] in name
        assert image["dataset"] not in name or "_" not in image["dataset"]


def test_dataset_names_are_safe() -> None:
    assert safe_dataset_name("Task01_Brain Tumour/x") == "Task01-Brain-Tumour-x"
    name = sample_name("xray", "My__Data--set", "abc", "2d", 0)
    assert name == "x_00--My-Data-set--abc--z_0000"
    assert modality_of_name(name) == "xray"
    assert sample_name("mr", "d", "c", "sagittal", 7).endswith("--x_0007")
    assert sample_name("ct", "d", "c", "coronal", 12345).endswith("--y_12345")


@pytest.mark.parametrize("key", ["bird", "llava", "qwen2vl", "trl-jsonl"])
def test_written_pngs_are_the_table_images(exported: dict, tables: dict, key: str) -> None:
    files = sorted((exported[key] / "images").iterdir())
    assert [f.stem for f in files] == sorted(tables["images"])
    for f in files:
        image = tables["images"][f.stem]
        assert f.read_bytes() == image["image"]["bytes"]
        with Image.open(f) as im:
            assert im.size == (image["width"], image["height"])


def test_records_hold_no_png_bytes_and_images_stream_in_order(
    dataset: Path, tables: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = read_records(dataset)
    every = [r for recs in records.splits.values() for r in recs]
    assert sorted(r.name for r in every) == sorted(tables["images"])
    for r in every:
        assert not hasattr(r, "png") and isinstance(r.image, ImageRef)
        assert not any(isinstance(v, bytes) for v in vars(r).values())
    monkeypatch.setattr(export_records, "IMAGE_BATCH_ROWS", 3)  # reads cross batch edges
    streamed: dict[str, list[str]] = {}
    for record, png in iter_images(records):
        assert png == tables["images"][record.name]["image"]["bytes"]
        streamed.setdefault(record.split, []).append(record.name)
    assert streamed == {s: [r.name for r in recs] for s, recs in records.splits.items() if recs}


def test_llava_holds_every_turn_once(exported: dict, tables: dict) -> None:
    for split in ("train", "test"):
        got = _conversation_turns(exported["llava"] / f"{split}.json")
        assert got == tables["turns"][split]


def test_qwen2vl_boxes_come_from_the_regions(exported: dict, tables: dict) -> None:
    key, field = "qwen2vl", "bbox_1000"
    for split in ("train", "test"):
        got = _conversation_turns(exported[key] / f"{split}.json")
        assert sum(got.values()) == sum(tables["turns"][split].values())
        expected = Counter(
            (name, len(QWEN_BOX.findall(q)), len(QWEN_BOX.findall(a)))
            for (name, q, a), n in tables["turns"][split].items()
            for _ in range(n)
        )
        seen = Counter()
        for (name, q, a), n in got.items():
            assert "<box>" not in q + a and "<ref>" not in q + a
            boxes = _region_boxes(tables, name, field)
            for m in QWEN2_BOX.finditer(q + a):
                assert tuple(int(v) for v in m.groups()) in boxes
            seen[(name, len(QWEN2_BOX.findall(q)), len(QWEN2_BOX.findall(a)))] += n
        assert seen == expected


def test_qwen2vl_text_refuses_a_box_of_no_region() -> None:
    region = TextRegion("liver", (1, 2, 3, 4), (10, 20, 30, 40))
    text = "<ref>liver</ref><box>(1,2),(3,4)</box>"
    assert qwen2vl_text(text, [region]) == (
        "<|object_ref_start|>liver<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>"
    )
    with pytest.raises(ValueError):
        qwen2vl_text("<ref>spleen</ref><box>(1,2),(3,4)</box>", [region])
    with pytest.raises(ValueError):
        qwen2vl_text("<box>(1,2),(3,5)</box>", [region])


def _trl_turns(rows: list[dict]) -> Counter:
    got: Counter = Counter()
    for row in rows:
        messages = row["messages"]
        assert [p["type"] for p in messages[0]["content"]] == ["image", "text"]
        assert all(p["type"] == "text" for m in messages[1:] for p in m["content"])
        assert len(row["images"]) == 1
        image = row["images"][0]
        name = Path(image if isinstance(image, str) else image["path"]).stem
        for user, assistant in zip(messages[::2], messages[1::2], strict=True):
            assert (user["role"], assistant["role"]) == ("user", "assistant")
            got[(name, user["content"][-1]["text"], assistant["content"][0]["text"])] += 1
    return got


def test_trl_parquet_and_jsonl_hold_every_turn_once(exported: dict, tables: dict) -> None:
    for split in ("train", "test"):
        rows = pq.read_table(exported["trl"] / f"{split}.parquet").to_pylist()
        assert _trl_turns(rows) == tables["turns"][split]
        for row in rows:
            name = Path(row["images"][0]["path"]).stem
            assert row["images"][0]["bytes"] == tables["images"][name]["image"]["bytes"]
        lines = (exported["trl-jsonl"] / f"{split}.jsonl").read_text().splitlines()
        jrows = [json.loads(line) for line in lines]
        assert _trl_turns(jrows) == tables["turns"][split]
        for row in jrows:
            assert (exported["trl-jsonl"] / row["images"][0]).is_file()


def test_trl_parquet_loads_with_images_decoded(exported: dict, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(
        "parquet",
        data_files={"train": str(exported["trl"] / "train.parquet")},
        cache_dir=str(tmp_path / "cache"),
    )
    assert isinstance(ds["train"][0]["images"][0], Image.Image)


def test_hf_folder_loads_offline(exported: dict, tables: dict, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(exported["hf"]), cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds["train"][0]["image"], Image.Image)
    for split in ("train", "test"):
        got: Counter = Counter()
        for row in ds[split]:
            for q in row["qa"]:
                got[(row["id"], q["question"], q["answer"])] += 1
        assert got == tables["turns"][split]
    row = ds["test"][0]
    assert row["image"].size == (row["width"], row["height"])


def test_hf_card_names_splits_counts_sources_and_licences(exported: dict, dataset: Path) -> None:
    card = (exported["hf"] / "README.md").read_text()
    front = card.split("---")[1]
    assert "path: data/train-*.parquet" in front and "path: data/test-*.parquet" in front
    assert 'license: "cc-by-4.0"' in front
    assert "| SyntheticCTPhantom | nnunet | ct |" in card and "CC0-1.0" in card
    manifest = json.loads((dataset / "dataset.json").read_text())
    assert f'"seed": {manifest["config"]["seed"]}' in card
    assert str(dataset) not in card  # no local paths in a card meant for publishing


EVIL_NAME = "Evil | name\n# heading <img src=x onerror=alert(1)>"
EVIL_LICENCE = "[free](javascript:alert(1)) \x1b[31m| CC0\n---\nlicense: ["


def test_hf_card_shows_hostile_names_and_licences_inert(dataset: Path) -> None:
    import dataclasses

    import yaml
    from markdown_it import MarkdownIt

    from medgrit.adapters.export.hf import dataset_card
    from medgrit.core.markdown import printable_text

    records = read_records(dataset)
    from medgrit.schemas.manifest import Manifest

    manifest = json.loads(json.dumps(records.manifest.to_json()))
    first = manifest["sources"][0]
    old = first["dataset"]
    first["dataset"] = EVIL_NAME
    first["datasets"] = {EVIL_NAME: first["datasets"][old]}
    overall = "<script>alert(1)</script>\n# Licence: MIT: {a: [b"
    card = dataset_card(
        dataclasses.replace(records, manifest=Manifest.model_validate(manifest)),
        overall,
        {EVIL_NAME: EVIL_LICENCE},
    )

    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "other" and meta["configs"][0]["config_name"] == "default"

    md = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    md.validateLink = lambda url: True  # a javascript: link would render: none may form
    tokens = md.parse(body)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings == [
        "Med-GRIT-style refer-and-ground dataset",
        "Counts (images, and QA pairs per task)",
        "Sources",
        "Build config",
    ]
    assert not [t for t in tokens if t.type == "html_block"]
    inline = [t for t in tokens if t.type == "inline"]
    assert {c.type for t in inline for c in t.children or []} <= {"text", "code_inline"}

    def cells(table: int) -> list[list[str]]:
        opens = [i for i, t in enumerate(tokens) if t.type == "table_open"]
        end = next(i for i, t in enumerate(tokens) if t.type == "table_close" and i > opens[table])
        rows: list[list[str]] = []
        for t in tokens[opens[table] : end]:
            if t.type == "tr_open":
                rows.append([])
            elif t.type == "inline":
                rows[-1].append("".join(c.content for c in t.children or []))
        return rows

    sources = cells(1)
    assert sources[0] == ["dataset", "kind", "modalities", "cases", "licence"]
    assert len(sources) == 1 + len(manifest["sources"]) and {len(r) for r in sources} == {5}
    assert sources[1][0] == printable_text(EVIL_NAME)
    assert sources[1][4] == printable_text(EVIL_LICENCE)
    assert f"Licence: {printable_text(overall)}." in [
        "".join(c.content for c in t.children or []) for t in inline
    ]
    assert "\x1b" not in card


def test_a_licence_for_an_unknown_source_is_refused(
    medgrit_offline, dataset: Path, tmp_path: Path
) -> None:
    target = tmp_path / "hf"
    result = medgrit_offline(
        "export", str(dataset), "-f", "hf", "--license", "nosuch=MIT", "--out", str(target)
    )
    line = _one_error_line(result)
    assert "nosuch" in line and "SyntheticCTPhantom" in line  # the unknown and the known names
    assert not target.exists() and not list(tmp_path.iterdir())


def test_own_tables_load_with_datasets(dataset: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    files = sorted(str(p) for p in (dataset / "images").glob("part-*.parquet"))
    cache = str(tmp_path / "cache")
    ds = datasets.load_dataset("parquet", data_files={"train": files}, cache_dir=cache)["train"]
    ds = ds.cast_column("image", datasets.Image())
    assert isinstance(ds[0]["image"], Image.Image)
    assert ds[0]["image"].size == (ds[0]["width"], ds[0]["height"])


def test_predict_baseline_covers_every_test_turn(
    dataset: Path, exported: dict, tables: dict, tmp_path: Path
) -> None:
    out = tmp_path / "pred.jsonl"
    n = write_predictions(dataset, out, ["VG", "ROC", "RC", "MIA"])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == len(lines)
    bird = [
        (rec["id"], task, rec["conversations"][0][0], rec["conversations"][0][1])
        for task, file in BIRD_TEST_FILES.items()
        for rec in json.loads((exported["bird"] / file).read_text())
    ]
    got = [(p["id"], p["task"], p["question"], p["annotation"]) for p in lines]
    assert Counter(got) == Counter(bird)
    for p in lines:
        assert p["image"] == f"{p['id']}.png" and p["response"]
        if p["task"] == "VG":
            assert re.fullmatch(VG_ANSWER, p["response"])
    only = tmp_path / "vg.jsonl"
    write_predictions(dataset, only, ["VG"])
    assert {json.loads(line)["task"] for line in only.read_text().splitlines()} == {"VG"}


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medgrit: error:"), result.stderr
    return lines[0]


def test_user_errors_are_one_line_and_write_nothing(
    medgrit_offline, dataset: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    missing = tmp_path / "missing"
    _one_error_line(medgrit_offline("export", str(missing), "-f", "bird", "--out", str(target)))
    line = _one_error_line(
        medgrit_offline("export", str(dataset), "--format", "coco", "--out", str(target))
    )
    assert "'coco' is not one of 'bird', 'llava'" in line
    _one_error_line(
        medgrit_offline("export", str(dataset), "-f", "bird", "--jsonl", "--out", str(target))
    )
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    line = _one_error_line(
        medgrit_offline("export", str(dataset), "-f", "bird", "--out", str(full))
    )
    assert "not empty" in line
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    pending = tmp_path / "pending"
    shutil.copytree(dataset, pending)
    manifest = json.loads((pending / "dataset.json").read_text())
    manifest["shards"][0]["status"] = "pending"
    manifest["status"] = "incomplete"
    (pending / "dataset.json").write_text(json.dumps(manifest))
    line = _one_error_line(
        medgrit_offline("export", str(pending), "-f", "hf", "--out", str(target))
    )
    assert "not a complete build" in line
    line = _one_error_line(
        medgrit_offline("predict-baseline", str(pending), "--out", str(tmp_path / "p.jsonl"))
    )
    assert "not a complete build" in line
    line = _one_error_line(
        medgrit_offline("predict-baseline", str(dataset), "--out", str(full / "keep.txt"))
    )
    assert "not empty" in line
    line = _one_error_line(
        medgrit_offline("predict-baseline", str(dataset), "--task", "XX", "--out", str(target))
    )
    assert "unknown --task" in line
    assert not target.exists() and not (tmp_path / "p.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_an_out_that_cannot_be_written_is_refused_before_the_dataset_is_read(
    medgrit_offline, dataset: Path, tmp_path: Path
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    for command, name in (("export", "bird"), ("predict-baseline", "p.jsonl")):
        for out, words in (
            (a_file / "deeper" / name, f"lies under {a_file}, which is a file"),
            (Path("/proc/medgrit-test") / name, "the folder /proc is not writable"),
        ):
            args = ["-f", "bird"] if command == "export" else []
            line = _one_error_line(medgrit_offline(command, str(dataset), *args, "--out", str(out)))
            assert f"--out {out}" in line and words in line, line
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_export_command_writes_into_an_empty_folder(
    medgrit_offline, dataset: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = medgrit_offline("export", str(dataset), "--format", "llava", "--out", str(empty))
    assert result.returncode == 0, result.stderr
    assert (empty / "train.json").is_file() and (empty / "test.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_damaged_table_part_is_one_line_for_every_reader(
    medgrit_offline, dataset: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    part = sorted((copy / "regions").glob("part-*.parquet"))[0]
    part.write_bytes(b"not parquet")
    for args in (
        ("export", str(copy), "--format", "bird", "--out", str(tmp_path / "bird")),
        ("predict-baseline", str(copy), "--out", str(tmp_path / "p.jsonl")),
        ("report", str(copy), "--out", str(tmp_path / "r.html")),
    ):
        message = _one_error_line(medgrit_offline(*args))
        assert "not readable Parquet" in message and "medgrit validate" in message, args
    assert not (tmp_path / "bird").exists() and not (tmp_path / "r.html").exists()


# A writer that dies by SIGKILL where it stands: in mid-export (its format writer has written a
# file of the staging folder) and in mid-baseline (the staging file is whole, not yet renamed).
_KILLED_WRITER = """
import os, sys
from pathlib import Path
from medgrit.adapters.export import write

def killed(records, folder, options):
    (folder / "train.json").write_text("half a file")
    os.kill(os.getpid(), 9)

write.FORMATS["bird"] = killed
os.replace = lambda *args: os.kill(os.getpid(), 9)
dataset, out, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if kind == "export":
    write.export_dataset(dataset, "bird", out)
else:
    write.write_predictions(dataset, out, ["VG"])
"""

# A writer that is alive while the test runs: it says so once its staging folder holds a file,
# then waits for its stdin to close.
_LIVE_WRITER = """
import sys
from pathlib import Path
from medgrit.adapters.export import write

def waiting(records, folder, options):
    (folder / "train.json").write_text("[]")
    print("writing", flush=True)
    sys.stdin.read()
    return {}

write.FORMATS["bird"] = waiting
write.export_dataset(Path(sys.argv[1]), "bird", Path(sys.argv[2]))
"""


def test_an_export_killed_outright_leaves_nothing_the_next_one_keeps(
    medgrit_offline, dataset: Path, tmp_path: Path
) -> None:
    left: list[str] = []
    for kind, out in (("export", tmp_path / "bird"), ("baseline", tmp_path / "p.jsonl")):
        killed = subprocess.run(
            [sys.executable, "-c", _KILLED_WRITER, str(dataset), str(out), kind],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert killed.returncode == -9, killed.stderr
        # Only the staging of the writer just killed: each writer removes those before it.
        (staging,) = [p.name for p in tmp_path.iterdir()]
        assert staging.startswith(f".{out.name}.") and staging not in left
        left.append(staging)
    # Another machine's export (on a shared folder) may be alive whatever our process table says.
    elsewhere = tmp_path / ".x.export.tmp-another.host~4194305~abcd1234"
    elsewhere.mkdir()
    live = subprocess.Popen(
        [sys.executable, "-c", _LIVE_WRITER, str(dataset), str(tmp_path / "other")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert live.stdout.readline() == "writing\n"
        (writing,) = [p for p in tmp_path.iterdir() if p.name not in [*left, elsewhere.name]]
        result = medgrit_offline(
            "export", str(dataset), "-f", "llava", "--out", str(tmp_path / "l")
        )
        assert result.returncode == 0, result.stderr
        kept = sorted(["l", writing.name, elsewhere.name])
        assert sorted(p.name for p in tmp_path.iterdir()) == kept
        result = medgrit_offline(
            "predict-baseline", str(dataset), "--out", str(tmp_path / "b.jsonl")
        )
        assert result.returncode == 0, result.stderr
        assert (writing / "train.json").read_text() == "[]"  # a live writer's work is kept
    finally:
        live.stdin.close()
        live.wait(timeout=120)
    assert live.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["b.jsonl", "l", "other", elsewhere.name]
    )
