"""`medgrit export --boxes`: every export writes the boxes `medgrit finetune` trains on, and loads
with `datasets` from any working directory.

One demo build (the fine-tune tests' own) is exported in every format with every box format its
training code reads. The expected text is written here from the dataset's tables: each Qwen-VL
box becomes its region's box in the format's syntax, in the 0-1000 frame or in pixels of the
image as Qwen2.5-VL's processor resizes it (sides rounded to multiples of 28, within 56 * 56 and
max_pixels, as the processor's documentation gives the rule), scaled from the region's pixel
box by this file's own arithmetic. The fine-tune's train examples, tokenised, hold the same
text as the export.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from itertools import groupby
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from medgrit.adapters.export.write import ExportOptions, export_dataset
from medgrit.adapters.store.validate import read_table
from medgrit.core.exports import sample_name

BOXES = ("qwen-vl", "qwen2-tokens", "qwen2.5-absolute", "qwen2.5-json")
DEFAULTS = {
    "bird": "qwen-vl",
    "llava": "qwen-vl",
    "trl": "qwen2.5-absolute",
    "qwen2vl": "qwen2-tokens",
    "hf": "qwen-vl",
}
PIXEL_BOXES = ("qwen2.5-absolute", "qwen2.5-json")
FINETUNE_MAX_PIXELS = 1280 * 28 * 28  # FinetuneConfig.max_pixels, checked below
QWEN25_MIN_PIXELS = 3136  # Qwen2.5-VL-3B-Instruct's preprocessor_config.json min_pixels
SMALL_MAX_PIXELS = 200_000
QWEN_VL = re.compile(r"(?:<ref>(?P<ref>[^<]*)</ref>)?<box>\((\d+),(\d+)\),\((\d+),(\d+)\)</box>")
REF = re.compile(r"<ref>([^<]*)</ref>")
PREFIX = re.compile(r"^Picture 1: <img>[^<]+\.png</img>\n")


def qwen_resized(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) as Qwen2-VL's image processor resizes: each side rounded to a multiple of
    28; over max_pixels, both scaled down by the square root of the excess and floored to 28;
    under the minimum, scaled up and ceiled."""
    w, h = round(width / 28) * 28, round(height / 28) * 28
    if w * h > max_pixels:
        shrink = math.sqrt(width * height / max_pixels)
        w = max(28, math.floor(width / shrink / 28) * 28)
        h = max(28, math.floor(height / shrink / 28) * 28)
    elif w * h < QWEN25_MIN_PIXELS:
        grow = math.sqrt(QWEN25_MIN_PIXELS / (width * height))
        w, h = math.ceil(width * grow / 28) * 28, math.ceil(height * grow / 28) * 28
    return w, h


def test_the_resize_rule_of_this_file_by_hand() -> None:
    assert qwen_resized(197, 233, FINETUNE_MAX_PIXELS) == (196, 224)  # 7.04 -> 7, 8.32 -> 8
    assert qwen_resized(480, 400, FINETUNE_MAX_PIXELS) == (476, 392)
    assert qwen_resized(96, 96, FINETUNE_MAX_PIXELS) == (84, 84)
    # 504 * 504 > 200,000: 512 / sqrt(512 * 512 / 200,000) = 447.2 -> 15 * 28
    assert qwen_resized(512, 512, SMALL_MAX_PIXELS) == (420, 420)
    assert qwen_resized(512, 512, FINETUNE_MAX_PIXELS) == (504, 504)
    assert qwen_resized(20, 40, FINETUNE_MAX_PIXELS) == (56, 84)  # 800 px < 3136: scaled up


@pytest.fixture(scope="module")
def dataset(finetune_dataset: Path) -> Path:
    return finetune_dataset


@pytest.fixture(scope="module")
def tables(dataset: Path) -> dict:
    """Per sample name: the image's size and regions, and its turns per split."""
    images = {r["image_id"]: r for r in read_table(dataset, "images")}
    names = {
        i: sample_name(r["modality"], r["dataset"], r["case_id"], r["plane"], r["slice_index"])
        for i, r in images.items()
    }
    regions: dict[str, dict[str, dict]] = {n: {} for n in names.values()}
    for r in read_table(dataset, "regions"):
        regions[names[r["image_id"]]][r["region_id"]] = r
    turns = [
        (names[c["image_id"]], c["split"], q)
        for c in read_table(dataset, "conversations")
        for q in c["qa"]
    ]
    sizes = {names[i]: (r["width"], r["height"]) for i, r in images.items()}
    return {"sizes": sizes, "regions": regions, "turns": turns}


def _written(tables: dict, name: str, region_ids: list[str], box_format: str, max_pixels: int):
    """The box a Qwen-VL box (and its label) of a turn stands for, in ``box_format``."""
    regions = tables["regions"][name]
    order = [i for i in region_ids if i in regions] + [i for i in regions if i not in region_ids]
    w, h = tables["sizes"][name]
    rw, rh = qwen_resized(w, h, max_pixels)

    def box(ref: str | None, thousand: tuple[int, ...]) -> tuple[int, ...]:
        region = next(
            regions[i]
            for i in order
            if tuple(regions[i]["bbox_1000"]) == thousand
            and (ref is None or regions[i]["label"] == ref)
        )
        if box_format not in PIXEL_BOXES:
            return tuple(region["bbox_1000"])
        x0, y0, x1, y1 = region["bbox"]
        return (round(x0 * rw / w), round(y0 * rh / h), round(x1 * rw / w), round(y1 * rh / h))

    return box


def _expected_text(text: str, box_format: str, box) -> str:
    def one(match: re.Match) -> str:
        ref = match["ref"]
        x0, y0, x1, y1 = box(ref, tuple(int(v) for v in match.groups()[1:]))
        if box_format == "qwen-vl":
            return match[0]
        if box_format == "qwen2.5-json":
            grounded = {"bbox_2d": [x0, y0, x1, y1], **({} if ref is None else {"label": ref})}
            return json.dumps(grounded, ensure_ascii=False)
        tokens = f"<|box_start|>({x0},{y0}),({x1},{y1})<|box_end|>"
        return tokens if ref is None else f"<|object_ref_start|>{ref}<|object_ref_end|>{tokens}"

    out = QWEN_VL.sub(one, text)
    if box_format == "qwen2.5-json":
        return REF.sub(lambda m: m[1], out)
    if box_format in ("qwen2-tokens", "qwen2.5-absolute"):
        return REF.sub(lambda m: f"<|object_ref_start|>{m[1]}<|object_ref_end|>", out)
    return out


def expected_turns(tables: dict, box_format: str, max_pixels: int = FINETUNE_MAX_PIXELS) -> Counter:
    """(name, split, question, answer) of every turn, written here in ``box_format``."""
    got: Counter = Counter()
    for name, split, q in tables["turns"]:
        box = _written(tables, name, q["region_ids"], box_format, max_pixels)
        texts = (_expected_text(q[k], box_format, box) for k in ("question", "answer"))
        got[(name, split, *texts)] += 1
    return got


def read_turns(fmt: str, folder: Path) -> Counter:
    """(name, split, question, answer) of every turn an export holds, read from its files."""
    got: Counter = Counter()
    for split in ("train", "test"):
        if fmt == "bird":
            files = ["train.json"] if split == "train" else ["Test_VG.json", "Test_RO.json"]
            files += [] if split == "train" else ["Test_GC.json", "Test_MII.json"]
            for file in files:
                for rec in json.loads((folder / file).read_text()):
                    for q, a in rec["conversations"]:
                        got[(rec["id"], split, PREFIX.sub("", q), a)] += 1
        elif fmt in ("llava", "qwen2vl"):
            for rec in json.loads((folder / f"{split}.json").read_text()):
                turns = rec["conversations"]
                for human, gpt in zip(turns[::2], turns[1::2], strict=True):
                    question = human["value"].removeprefix("<image>\n")
                    got[(rec["id"], split, question, gpt["value"])] += 1
        elif fmt == "trl":
            for row in trl_rows(folder, split):
                name = Path(row["images"][0]["path"]).stem
                for user, bot in zip(row["messages"][::2], row["messages"][1::2], strict=True):
                    got[(name, split, user["content"][-1]["text"], bot["content"][0]["text"])] += 1
        else:
            rows = pq.read_table(folder / f"data/{split}-00000-of-00001.parquet").to_pylist()
            for row in rows:
                for q in row["qa"]:
                    got[(row["id"], split, q["question"], q["answer"])] += 1
    return got


def trl_rows(folder: Path, split: str) -> list[dict]:
    if (folder / f"{split}.parquet").is_file():
        return pq.read_table(folder / f"{split}.parquet").to_pylist()
    lines = (folder / f"{split}.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    return [{**r, "images": [{"path": r["images"][0]}]} for r in rows]


@pytest.fixture(scope="module")
def exported(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every format with every box format it takes, and with none (its default)."""
    root = tmp_path_factory.mktemp("boxes")
    out = {}
    cases = [("bird", None), ("bird", "qwen-vl")]
    cases += [(f, b) for f in ("llava", "trl", "qwen2vl", "hf") for b in (None, *BOXES)]
    for fmt, boxes in cases:
        folder = root / f"{fmt}-{boxes}"
        export_dataset(dataset, fmt, folder, ExportOptions(boxes=boxes))
        out[(fmt, boxes)] = folder
    return out


def test_every_format_writes_the_boxes_asked_for(exported: dict, tables: dict) -> None:
    wanted = {b: expected_turns(tables, b) for b in BOXES}
    assert len(set(map(frozenset, wanted.values()))) == 4  # the four formats differ here
    for (fmt, boxes), folder in exported.items():
        got = read_turns(fmt, folder)
        assert got == wanted[boxes or DEFAULTS[fmt]], (fmt, boxes)
        if fmt == "hf":  # the card says which boxes the text holds
            card = (folder / "README.md").read_text()
            syntax = {
                "qwen-vl": "Qwen-VL boxes `<ref>label</ref><box>(x1,y1),(x2,y2)</box>`",
                "qwen2-tokens": "Qwen2-VL's box tokens `<|object_ref_start|>label",
                "qwen2.5-absolute": "Qwen2.5-VL's box tokens `<|object_ref_start|>label",
                "qwen2.5-json": 'Qwen2.5-VL\'s grounding JSON `{"bbox_2d": [x1, y1, x2, y2]',
            }[boxes or "qwen-vl"]
            assert f"Boxes in text are {syntax}" in card
            pixels = f"at most {FINETUNE_MAX_PIXELS} pixels" in card
            assert pixels == ((boxes or "qwen-vl") in PIXEL_BOXES)


def test_absolute_boxes_are_pixels_of_the_resized_image(exported: dict, tables: dict) -> None:
    """On a 197 x 233 image (seen as 196 x 224) a box's y is 4% less than the stored pixels."""
    folder = exported[("qwen2vl", "qwen2.5-absolute")]
    tall = [n for n, size in tables["sizes"].items() if size == (197, 233)]
    assert tall, "the demo build has an MNI152 slice of 197 x 233"
    records = {r["id"]: r for r in json.loads((folder / "train.json").read_text())}
    tokens = re.compile(r"<\|box_start\|>\((\d+),(\d+)\),\((\d+),(\d+)\)<\|box_end\|>")
    seen, moved = 0, 0
    for name in tall:
        stored = {tuple(r["bbox"]) for r in tables["regions"][name].values()}
        resized = {
            (
                round(x0 * 196 / 197),
                round(y0 * 224 / 233),
                round(x1 * 196 / 197),
                round(y1 * 224 / 233),
            )
            for x0, y0, x1, y1 in stored
        }
        for turn in records.get(name, {"conversations": []})["conversations"]:
            for m in tokens.finditer(turn["value"]):
                box = tuple(int(v) for v in m.groups())
                assert box in resized
                seen += 1
                moved += box not in stored  # the stored image's pixels would be off
    assert seen and moved


def test_finetune_trains_on_the_exports_text(
    exported: dict, dataset: Path, finetune_records, tables: dict, tmp_path: Path
) -> None:
    """The fine-tune's examples (its own writer, its processor's resize with the config's
    defaults) hold, token for token, the questions and answers the trl export holds."""
    from medgrit.adapters.training.examples import write_train_examples
    from medgrit.adapters.training.processor import VisionChatProcessor
    from medgrit.schemas.finetune import FinetuneConfig
    from medgrit_testing.tiny_vlm import train_tokenizer

    assert FinetuneConfig.model_fields["max_pixels"].default == FINETUNE_MAX_PIXELS
    assert FinetuneConfig.model_fields["min_pixels"].default is None  # the model's own: 3136
    tokenizer = train_tokenizer([t[2]["answer"] for t in tables["turns"]][:200], 600)
    for box_format, max_pixels in (
        ("qwen2.5-absolute", FINETUNE_MAX_PIXELS),
        ("qwen2.5-json", FINETUNE_MAX_PIXELS),
        ("qwen2.5-absolute", SMALL_MAX_PIXELS),
    ):
        # Qwen2.5-VL's image processor as ``load_processor`` leaves it: the model's min_pixels,
        # the config's max_pixels, 14-pixel patches merged 2 x 2.
        size = {"shortest_edge": QWEN25_MIN_PIXELS, "longest_edge": max_pixels}
        image_processor = SimpleNamespace(size=size, patch_size=14, merge_size=2)
        processor = VisionChatProcessor(tokenizer, image_processor)
        work = tmp_path / f"{box_format}-{max_pixels}"
        write_train_examples(finetune_records, processor, box_format, 100_000, work)
        with pa.OSFile(str(work / "train.arrow")) as source:
            examples = pa.ipc.open_stream(source).read_all().to_pylist()
        export = tmp_path / f"trl-{box_format}-{max_pixels}"
        options = ExportOptions(boxes=box_format, max_pixels=max_pixels)
        export_dataset(dataset, "trl", export, options)
        rows = {Path(r["images"][0]["path"]).stem: r for r in trl_rows(export, "train")}
        assert sorted(rows) == sorted(e["name"] for e in examples)
        for example in examples:
            messages = rows[example["name"]]["messages"]
            answers = [m["content"][0]["text"] for m in messages[1::2]]
            pairs = zip(example["input_ids"], example["labels"], strict=True)
            runs = [
                [token for token, _ in run]
                for trained, run in groupby(pairs, key=lambda p: p[1] != -100)
                if trained
            ]
            encode = tokenizer([f"{a}<|im_end|>" for a in answers], add_special_tokens=False)[
                "input_ids"
            ]
            assert runs == encode
            whole = tokenizer.backend_tokenizer.decode(
                example["input_ids"], skip_special_tokens=False
            )
            for user in messages[::2]:
                assert f"{user['content'][-1]['text']}<|im_end|>" in whole
        wanted = Counter(
            t for t in expected_turns(tables, box_format, max_pixels).elements() if t[1] == "train"
        )
        got = read_turns("trl", export)
        assert Counter({t: n for t, n in got.items() if t[1] == "train"}) == wanted


def test_the_command_line_exports_boxes_and_refuses_what_a_format_cannot_carry(
    medgrit_offline, dataset: Path, exported: dict, tables: dict, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from medgrit.cli import app

    jsonl = tmp_path / "trl-jsonl"
    args = ["export", str(dataset), "-f", "TRL", "--jsonl", "--out", str(jsonl)]
    done = medgrit_offline(*args, "--max-pixels", str(SMALL_MAX_PIXELS))
    assert done.returncode == 0, done.stderr
    assert "with qwen2.5-absolute boxes" in done.stdout
    small = expected_turns(tables, "qwen2.5-absolute", SMALL_MAX_PIXELS)
    assert read_turns("trl", jsonl) == small
    assert small != expected_turns(tables, "qwen2.5-absolute")  # 512 x 512 images seen smaller
    for row in trl_rows(jsonl, "train"):
        assert row["images"][0]["path"] == f"images/{Path(row['images'][0]['path']).name}"
        assert (jsonl / row["images"][0]["path"]).is_file()

    runner = CliRunner()
    args = ["export", str(dataset), "-f", "llava", "--boxes", "pixels"]
    done = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert done.exit_code == 2  # a usage error (one line from the console script, as --format's)
    assert "'pixels' is not one of 'qwen-vl', 'qwen2-tokens', 'qwen2.5-absolute'" in done.stderr
    # the older flag still works, says it is old, and means --boxes qwen2.5-absolute
    old = tmp_path / "old"
    done = runner.invoke(
        app, ["export", str(dataset), "-f", "qwen2vl", "--absolute-boxes", "-o", str(old)]
    )
    assert done.exit_code == 0 and "deprecated" in done.stderr, done.stderr
    new = exported[("qwen2vl", "qwen2.5-absolute")]
    for name in ("train.json", "test.json"):
        assert (old / name).read_bytes() == (new / name).read_bytes()
    for bad, words in (
        (["-f", "bird", "--boxes", "qwen2.5-json"], "--format bird writes --boxes qwen-vl only"),
        (["-f", "hf", "--max-pixels", "50000"], "--max-pixels applies to"),
        (["-f", "qwen2vl", "--absolute-boxes", "--boxes", "qwen-vl"], "--absolute-boxes means"),
        (["-f", "trl", "--absolute-boxes"], "--absolute-boxes applies to --format qwen2vl"),
    ):
        target = tmp_path / "refused"
        done = runner.invoke(app, ["export", str(dataset), *bad, "--out", str(target)])
        lines = done.stderr.strip().splitlines()
        assert done.exit_code == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith("medgrit: error:") and words in lines[0], lines[0]
        assert not target.exists()
    usage = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200"}).stdout
    assert "<qwen-vl|qwen2-tokens|qwen2.5-absolute|qwen2.5-json>" in usage
    assert "<bird|llava|trl|qwen2vl|hf>" in usage
    assert "trl: qwen2.5-absolute; qwen2vl: qwen2-tokens" in usage


def test_every_export_loads_with_datasets_from_another_folder(
    exported: dict, dataset: Path, tables: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calls the exports' documentation gives, run elsewhere than the export folder."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    cache = str(tmp_path / "cache")
    splits = ("train", "test")

    def looks_right(image: Image.Image, path: str) -> None:
        assert isinstance(image, Image.Image)
        assert image.size == tables["sizes"][Path(path).stem]

    folder = str(exported[("trl", None)])
    files = {split: f"{folder}/{split}.parquet" for split in splits}
    ds = datasets.load_dataset("parquet", data_files=files, cache_dir=cache)
    first = pq.read_table(files["train"]).slice(0, 1).to_pylist()[0]
    looks_right(ds["train"][0]["images"][0], first["images"][0]["path"])

    ds = datasets.load_dataset(str(exported[("hf", None)]), cache_dir=cache)
    looks_right(ds["test"][0]["image"], ds["test"][0]["id"])

    for key in (("llava", None), ("qwen2vl", None)):
        folder = str(exported[key])
        files = {split: f"{folder}/{split}.json" for split in splits}
        ds = datasets.load_dataset("json", data_files=files, cache_dir=cache)
        ds = ds.map(lambda r, folder=folder: {"image": f"{folder}/{r['image']}"})
        ds = ds.cast_column("image", datasets.Image())
        looks_right(ds["train"][0]["image"], ds["train"][0]["id"])

    folder = str(exported[("bird", None)])
    files = {"train": f"{folder}/train.json"}
    ds = datasets.load_dataset("json", data_files=files, cache_dir=cache)
    ds = ds.map(lambda r: {"image": f"{folder}/images/{r['id']}.png"})
    ds = ds.cast_column("image", datasets.Image())
    looks_right(ds["train"][0]["image"], ds["train"][0]["id"])

    folder = str(tmp_path / "trl-jsonl")
    export_dataset(dataset, "trl", Path(folder), ExportOptions(jsonl=True))
    files = {split: f"{folder}/{split}.jsonl" for split in splits}
    ds = datasets.load_dataset("json", data_files=files, cache_dir=cache)
    names = [Path(r["images"][0]).stem for r in ds["test"]]
    ds = ds.map(lambda r: {"images": [f"{folder}/{p}" for p in r["images"]]})
    ds = ds.cast_column("images", datasets.Sequence(datasets.Image()))
    assert ds["test"][0]["messages"][0]["content"][0]["type"] == "image"
    looks_right(ds["test"][0]["images"][0], names[0])
