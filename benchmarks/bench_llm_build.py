"""Benchmark the LLM stage as users run it: a whole ``medgrit build --generator llm``.

What it measures
----------------
The project's OpenAI-compatible test server (:mod:`medgrit_testing.openai_server`) runs in a
child process with a fixed latency and an RPM limit (honest answers, so each image is one
request unless its answer fails verification or an identical prompt was answered already, from
the build's cache: about one image in five here). The build is the ``medgrit`` CLI in a
subprocess over a synthetic SA-Med2D-20M release of small (96x96) images, so that image work
does not hide the LLM stage, with ``--llm-rpm`` set to the server's limit. While it runs, the
benchmark polls the server's ``/stats`` every 0.25 s. For each setting it prints:

- **rpm/limit**: chat answers per minute over the steady part of the run, over the limit
  (target >= 0.95 at 600 and 6,000 RPM with 2 s latency). The steady part runs from the time
  the server had sent 10% of the run's answers to the time it had sent 90% (interpolated
  between polls): the ramp at the start (the first shards' image work, the first latency, the
  in-flight window growing with it) and the tail of the last shards' answers are left out;
  a pause in the middle, when the shards in flight ran out of requests or a 429 stopped the
  client, is counted. ``first-last`` gives the rate between the first and the last answer for
  comparison;
- **429 share**: 429 answers / chat requests (target <= 0.5%);
- **max in flight**: the most requests the server had open at once (Little's law: limit/60 x
  latency is needed);
- **client CPU ms/req**: CPU seconds of the build process beyond those of a template build of
  the same release (measured in the same run), per answer.

Settings (image counts chosen so that each LLM run lasts 1-3 minutes on two cores): 600 RPM
with 2 s latency and 6,000 RPM with 2 s latency (the default window, sized by Little's law),
and 20,000 RPM with 50 ms latency for ``--llm-concurrency`` unset, 32 and 128. On two cores the
20,000 RPM rows share the CPU with the server and the image work, so they show where the
machine, not the client, binds.

Run (from the repository root)::

    python benchmarks/bench_llm_build.py                 # about 20 minutes
    python benchmarks/bench_llm_build.py --only 6000 --images 10000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from medgrit.adapters.synthetic.samed2d import DATASETS, write_samed2d_release
from medgrit_testing.openai_server import ServerConfig, serve

API_KEY = "sk-bench-not-a-secret"


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run a build; returns (wall seconds, CPU seconds of the build process and its children)."""
    started = time.perf_counter()
    log = tempfile.TemporaryFile()  # a pipe would fill up and block the build's logging
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        log.seek(0)
        tail = log.read().decode(errors="replace")[-3000:]
        raise SystemExit(f"build failed: {' '.join(cmd)}\n{tail}")
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime


class Poller:
    """Samples the server's answered count; the rate is taken between first and last answer."""

    def __init__(self, server) -> None:
        self.server = server
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            stats = self.server.stats()
            self.samples.append((time.monotonic(), int(stats.get("status_200", 0))))
            self._stop.wait(0.25)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def rate_per_minute(self, low: float = 0.1, high: float = 0.9) -> float:
        """Answers per minute between the times ``low`` and ``high`` of the run's answers
        had come (the steady part; see the module docstring)."""
        if not self.samples or self.samples[-1][1] < 10:
            return 0.0
        total = self.samples[-1][1]
        start, end = self._time_of(low * total), self._time_of(high * total)
        return (high - low) * total / (end - start) * 60.0 if end > start else 0.0

    def first_to_last_per_minute(self) -> float:
        """Answers per minute between the first and the last answer."""
        answered = [(t, n) for t, n in self.samples if n > 0]
        if len(answered) < 2:
            return 0.0
        first = answered[0]
        last = next(s for s in answered if s[1] == answered[-1][1])  # when the last one came
        return (last[1] - first[1]) / (last[0] - first[0]) * 60.0 if last[0] > first[0] else 0.0

    def _time_of(self, count: float) -> float:
        """When the answered count reached ``count`` (linear between two polls)."""
        before = self.samples[0]
        for sample in self.samples:
            if sample[1] >= count:
                (t0, n0), (t1, n1) = before, sample
                return t1 if n1 == n0 else t0 + (t1 - t0) * (count - n0) / (n1 - n0)
            before = sample
        return self.samples[-1][0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slow-images", type=int, default=1200, help="images at 600 RPM")
    parser.add_argument("--images", type=int, default=10000, help="images at 6,000 RPM")
    parser.add_argument("--fast-images", type=int, default=10000, help="images at 20,000 RPM")
    parser.add_argument("--only", default="600,6000,20000", help="which limits to run")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="medgrit-bench-llm-build-"))
    env = _environment(root)
    exe = shutil.which("medgrit") or "medgrit"
    only = {int(x) for x in args.only.split(",")}
    settings = []
    if 600 in only:
        settings.append((600, 2000.0, args.slow_images, [None]))
    if 6000 in only:
        settings.append((6000, 2000.0, args.images, [None]))
    if 20000 in only:
        settings.append((20000, 50.0, args.fast_images, [None, 32, 128]))
    print(
        f"# medgrit LLM build benchmark ({platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()})"
    )
    rows = []
    releases: dict[int, tuple[str, float]] = {}
    try:
        for rpm, latency_ms, n_images, concurrencies in settings:
            if n_images not in releases:
                releases[n_images] = _release(root, n_images, exe, env)
            source, template_cpu = releases[n_images]
            for concurrency in concurrencies:
                config = ServerConfig(
                    rpm=rpm, tpm=1_000_000_000, latency_ms=(latency_ms, latency_ms), seed=1
                )
                with serve(config) as server:
                    out = root / "llm"
                    cmd = [exe, "build", source, "--out", str(out), "--generator", "llm"]
                    cmd += ["--llm-model", "bench", "--llm-base-url", server.base_url]
                    cmd += ["--llm-rpm", str(rpm), "--llm-tpm", "1000000000"]
                    if concurrency is not None:
                        cmd += ["--llm-concurrency", str(concurrency)]
                    with Poller(server) as poller:
                        wall, cpu = _run(cmd, env)
                    stats = server.stats()
                    shutil.rmtree(out)
                chat = stats["requests"].get("chat_completions", 0) or sum(
                    v for k, v in stats.items() if k.startswith("status_")
                )
                answered = stats.get("status_200", 0)
                rows.append(
                    {
                        "rpm": rpm,
                        "latency_ms": latency_ms,
                        "concurrency": concurrency or "auto",
                        "images": n_images,
                        "requests": answered,
                        "wall_s": wall,
                        "ratio": poller.rate_per_minute() / rpm,
                        "first_last": poller.first_to_last_per_minute() / rpm,
                        "share_429": stats.get("status_429", 0) / max(1, chat),
                        "max_in_flight": stats.get("max_in_flight", 0),
                        "cpu_ms": (cpu - template_cpu) / max(1, answered) * 1000,
                    }
                )
                load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
                print(
                    f"{rpm} RPM, concurrency {concurrency or 'auto'}: {wall:.0f} s "
                    f"(load average {load})",
                    flush=True,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _print_table(rows)


def _release(root: Path, n_images: int, exe: str, env: dict[str, str]) -> tuple[str, float]:
    """A synthetic release of ``n_images`` images, most of whose prompts differ, as a
    ``samed2d:`` source, and the CPU seconds of its template build (after a warm-up build, so
    that first imports are not counted)."""
    # Images are drawn at random from a pool per dataset: twice as many pooled images as
    # draws leave about four in five prompts distinct (the cache answers the rest).
    pool = 2 * -(-n_images // len(DATASETS))
    release = write_samed2d_release(root / f"release-{n_images}", n_images, pool=pool, size=96)
    source = f"samed2d:{release}"
    warm = root / "warm"
    _run([exe, "build", source, "--out", str(warm), "--max-images", "5"], env)
    shutil.rmtree(warm)
    template_out = root / "template"
    _, template_cpu = _run([exe, "build", source, "--out", str(template_out)], env)
    shutil.rmtree(template_out)
    return source, template_cpu


def _environment(root: Path) -> dict[str, str]:
    """The environment of the ``medgrit`` subprocesses: a Prefect home and key file under
    ``root``, the server's API key, no Prefect server of the caller's."""
    env = {
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_HOME": str(root / "prefect"),
        "MEDGRIT_KEY_FILE": str(root / "pseudonym.key"),
        "OPENAI_API_KEY": API_KEY,
    }
    env.pop("PREFECT_API_URL", None)
    return env


def _print_table(rows: list[dict]) -> None:
    """The results as a Markdown table, one row per limit and concurrency."""
    print()
    print(
        "| limit RPM | latency ms | --llm-concurrency | images | requests | wall s | "
        "rpm/limit | first-last | 429 share | max in flight | client CPU ms/req |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['rpm']} | {r['latency_ms']:.0f} | {r['concurrency']} | {r['images']} | "
            f"{r['requests']} | {r['wall_s']:.0f} | {r['ratio']:.3f} | {r['first_last']:.3f} | "
            f"{r['share_429']:.2%} | "
            f"{r['max_in_flight']} | {r['cpu_ms']:.2f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
