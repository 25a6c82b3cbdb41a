"""Benchmark: DICOM headers analysed per second by ``dicomcheck analyze``, and its peak memory.

Measured against a plain ``pydicom.dcmread(path, stop_before_pixels=True)`` loop over the same
files in the same run (see ``bench/README.md``)::

    python bench/bench_analyze.py [--files 5000] [--repeats 3] [--small 1000] [--out bench/out]

Every measurement runs in its own fresh subprocess so that its peak RSS can be read from
``getrusage``. The OS page cache is *not* dropped (that needs root and says nothing about
dicomcheck); instead every file is read once before timing, so all runs read from a warm cache.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DEFAULT_OUT = HERE / "out"


# --------------------------------------------------------------------------------------------
# children: one measurement each, printed as one JSON line on stdout
# --------------------------------------------------------------------------------------------


def _walk(folder: str) -> list[str]:
    """Files under ``folder`` in os.walk order, sorted like ``dicomcheck.sources.discover``."""
    files: list[str] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(os.path.join(root, name) for name in sorted(names) if not name.startswith("."))
    return files


def _rss_kib() -> tuple[int, int]:
    """(peak RSS of this process, peak RSS of the largest finished child), KiB (Linux)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _busy_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (Linux /proc/stat), or 0."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class _Meter:
    """Wall, own CPU and the CPU other processes of the machine used meanwhile ("foreign load")."""

    def __enter__(self) -> _Meter:
        self.cpu, self.busy, self.wall = _cpu_seconds(), _busy_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.wall
        self.cpu_seconds = _cpu_seconds() - self.cpu
        foreign = _busy_seconds() - self.busy - self.cpu_seconds
        self.foreign_cores = max(0.0, foreign) / self.seconds if self.seconds else 0.0


def child_baseline(folder: str) -> dict:
    from pydicom import dcmread

    files = _walk(folder)  # outside the timed region (analyze's discover is inside its own)
    start_rss, _ = _rss_kib()
    with _Meter() as meter:
        for path in files:
            dcmread(path, stop_before_pixels=True)
    peak, children = _rss_kib()
    return {
        "files": len(files),
        "seconds": meter.seconds,
        "cpu_seconds": meter.cpu_seconds,
        "foreign_cores": meter.foreign_cores,
        "rss_start_kib": start_rss,
        "rss_peak_kib": peak,
        "rss_children_peak_kib": children,
    }


def child_analyze(folder: str, workers: int | None) -> dict:
    """The in-process pipeline of ``dicomcheck.cli.analyze`` without the report rendering."""
    from dicomcheck.analysis import decide_studies
    from dicomcheck.knowledge import builtin_knowledge
    from dicomcheck.model import InstanceFacts
    from dicomcheck.sources import discover, read_all

    start_rss, _ = _rss_kib()
    with _Meter() as meter:  # own CPU includes the pool's workers: they are reaped when read_all returns
        started = time.perf_counter()
        builtin_knowledge()
        sources, errors = discover([folder])
        discovered = time.perf_counter()
        facts: list = []
        read_errors: list = list(errors)
        for result in read_all(sources, workers=workers):
            (facts if isinstance(result, InstanceFacts) else read_errors).append(result)
        read = time.perf_counter()
        studies = decide_studies(facts)
        decided = time.perf_counter()
    peak, children = _rss_kib()
    return {
        "files": len(sources),
        "seconds": meter.seconds,
        "cpu_seconds": meter.cpu_seconds,
        "foreign_cores": meter.foreign_cores,
        "seconds_discover": discovered - started,
        "seconds_read": read - discovered,
        "seconds_decide": decided - read,
        "instances": len(facts),
        "errors": len(read_errors),
        "studies": [
            {
                "outcome": s.outcome.value,
                "instances": s.instances,
                "series": [(d.series_description, d.kind.value, d.instances) for d in s.series],
            }
            for s in studies
        ],
        "workers": workers or os.cpu_count(),
        "rss_start_kib": start_rss,
        "rss_peak_kib": peak,
        "rss_children_peak_kib": children,
    }


def child_summary_size(folder: str, count: int) -> dict:
    """Bytes one instance leaves in the main process: its Source and its InstanceFacts.

    Facts are read in-process, then pickled in chunks of 256 (as the pool returns them) and the
    memory retained by unpickling them is traced, which is exactly how the main process of
    ``read_all`` receives them. ``decide_studies`` is traced too (peak, transient).
    """
    import tracemalloc

    from dicomcheck.analysis import decide_studies
    from dicomcheck.knowledge import builtin_knowledge
    from dicomcheck.sources import discover, read_facts

    builtin_knowledge()
    sources, _ = discover([folder])  # warm-up: imports, caches
    sources = sources[:count]
    facts = [read_facts(s) for s in sources]
    chunks = [pickle.dumps(facts[i : i + 256]) for i in range(0, len(facts), 256)]
    pickle_bytes = sum(len(pickle.dumps(f)) for f in facts) / len(facts)
    del facts
    gc.collect()

    # a Source is a small slotted object and its path string(s), plus its slot in the list
    source_bytes = sum(
        sys.getsizeof(src) + sys.getsizeof(src.path) + (sys.getsizeof(src.member) if src.member else 0) + 8
        for src in sources
    ) / len(sources)
    # (not tracemalloc around discover(): pathlib interns every path component, and a one-off
    # resize of the interpreter's interned-string table would be billed to the sources)

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    received = [f for chunk in chunks for f in pickle.loads(chunk)]
    gc.collect()
    facts_bytes = (tracemalloc.get_traced_memory()[0] - before) / len(received)

    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    decide_studies(received)
    decide_peak_bytes = (tracemalloc.get_traced_memory()[1] - before) / len(received)
    tracemalloc.stop()
    return {
        "instances": len(received),
        "source_bytes": round(source_bytes),
        "facts_bytes": round(facts_bytes),
        "facts_pickle_bytes": round(pickle_bytes),
        "decide_transient_bytes": round(decide_peak_bytes),
    }


def run_child(argv: list[str]) -> None:
    mode, folder, *rest = argv
    if mode == "baseline":
        result = child_baseline(folder)
    elif mode == "analyze":
        result = child_analyze(folder, int(rest[0]) if rest and rest[0] != "default" else None)
    elif mode == "summary":
        result = child_summary_size(folder, int(rest[0]))
    else:
        raise SystemExit(f"unknown child mode {mode}")
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------------


def _spawn(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cli(folder: str, files: int) -> dict:
    """``python -m dicomcheck.cli analyze --format json DIR > /dev/null``, end to end."""
    command = [sys.executable, "-m", "dicomcheck.cli", "analyze", "--format", "json", folder]
    busy, started = _busy_seconds(), time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    cpu = usage.ru_utime + usage.ru_stime
    foreign = max(0.0, _busy_seconds() - busy - cpu) / elapsed
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}")
    # wait4's ru_maxrss of a process that reaped its own children is the largest of it and them
    return {
        "files": files,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "foreign_cores": foreign,
        "rss_peak_kib": usage.ru_maxrss,
    }


def _warm(folder: Path) -> tuple[int, float]:
    started = time.perf_counter()
    total = 0
    for path in _walk(str(folder)):
        with open(path, "rb") as fh:
            total += len(fh.read())
    return total, time.perf_counter() - started


def _machine() -> dict:
    import numpy
    import pydicom

    import dicomcheck

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = next(
            int(line.split()[1]) // 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        memory = None
    git = {}
    try:
        repo = HERE.parent
        git["head"] = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        measured = ["dicomcheck/cli.py", "dicomcheck/sources.py", "dicomcheck/extract.py", "dicomcheck/analysis.py"]
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", *measured],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        git["modified"] = [line[3:] for line in status.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "git": git,
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "memory_mib": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "numpy": numpy.__version__,
        "dicomcheck": dicomcheck.__version__,
    }


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def _measured(
    name: str, step: Callable[[], dict], repeat: int, args: argparse.Namespace, retries: dict, discarded: list[dict]
) -> dict:
    """One measurement of ``step``, taken again while other processes loaded the machine, as long as
    ``retries`` has some left and the time budget since ``retries["since"]`` is not spent."""
    while True:
        result = step()
        print(
            f"  {name:14s} {result['files'] / result['seconds']:8.0f} files/s  "
            f"{result['seconds']:6.2f} s  CPU {1000 * result['cpu_seconds'] / result['files']:.3f} ms/file  "
            f"peak RSS {_mib(result['rss_peak_kib'])} MiB  other processes {result['foreign_cores']:.2f} cores",
            flush=True,
        )
        if (
            result["foreign_cores"] <= args.max_foreign
            or retries["left"] <= 0
            or time.perf_counter() - retries["since"] > args.budget
        ):
            return result
        retries["left"] -= 1
        discarded.append({"run": name, "repeat": repeat, **result})
        print(f"  {'':14s} discarded (other processes used > {args.max_foreign} cores), measuring again", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        run_child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000, help="files in the main study (default 5000)")
    parser.add_argument(
        "--small", type=int, default=1000, help="files in the second study of the memory check (default 1000)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="repeats of every measurement; medians are reported (default 3)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where studies are cached and results.json is written"
    )
    parser.add_argument("--no-cli", action="store_true", help="skip the end-to-end CLI measurement")
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=0.25,
        help="measure again when other processes used more than this many cores meanwhile (default 0.25)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=10,
        help="measurements that may be taken again for that reason, in all (default 10)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=200,
        help="seconds of measuring after which nothing is measured again (default 200)",
    )
    args = parser.parse_args(argv)
    if args.small >= args.files:
        parser.error("--small must be below --files")

    from make_study import write_study

    wall = time.perf_counter()
    machine = _machine()
    print(
        f"machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_mib']} MiB, "
        f"Python {machine['python']}, pydicom {machine['pydicom']}, numpy {machine['numpy']}, "
        f"dicomcheck {machine['dicomcheck']}",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    big_dir, small_dir = args.out / f"study-{args.files}", args.out / f"study-{args.small}"
    studies = {}
    for n, folder in ((args.files, big_dir), (args.small, small_dir)):
        manifest = write_study(n, folder)
        studies[n] = manifest
        state = "cached" if manifest["cached"] else f"written in {manifest['seconds_to_write']} s"
        print(
            f"study of {n} files: {folder} ({state}; {manifest['series']}, "
            f"mean {manifest['mean_file_bytes']} B/file, {manifest['mean_header_bytes']} B header)",
            flush=True,
        )
    print("OS page cache: not dropped; warming it by reading every file once ...", flush=True)
    for folder in (big_dir, small_dir):
        total, seconds = _warm(folder)
        print(f"  {folder.name}: {total / 2**20:.0f} MiB in {seconds:.2f} s", flush=True)

    loads: list[tuple[float, float, float]] = []
    runs: dict[str, list[dict]] = {"baseline": [], "analyze": [], "analyze_1": [], "cli": [], "analyze_small": []}
    discarded: list[dict] = []
    retries = {"left": args.retries, "since": time.perf_counter()}
    for repeat in range(1, args.repeats + 1):
        load = os.getloadavg()
        loads.append(load)
        print(
            f"repeat {repeat}/{args.repeats} (load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})",
            flush=True,
        )
        steps = [
            ("baseline", lambda: _spawn("baseline", str(big_dir))),
            ("analyze", lambda: _spawn("analyze", str(big_dir), "default")),
            ("analyze_1", lambda: _spawn("analyze", str(big_dir), "1")),
            ("cli", lambda: _cli(str(big_dir), args.files)),
            ("analyze_small", lambda: _spawn("analyze", str(small_dir), "default")),
        ]
        for name, step in steps:
            if name == "cli" and args.no_cli:
                continue
            runs[name].append(_measured(name, step, repeat, args, retries, discarded))
    for name in ("analyze", "analyze_1", "analyze_small"):
        for result in runs[name]:
            if result["errors"] or len(result["studies"]) != 1 or result["instances"] != result["files"]:
                raise RuntimeError(f"{name}: unexpected analysis result {result}")

    print("measuring the per-instance summaries ...", flush=True)
    summary = _spawn("summary", str(small_dir), str(args.small))

    rate = {name: statistics.median(r["files"] / r["seconds"] for r in rs) for name, rs in runs.items() if rs}
    best = {name: max(r["files"] / r["seconds"] for r in rs) for name, rs in runs.items() if rs}
    cpu_ms = {
        name: statistics.median(1000 * r["cpu_seconds"] / r["files"] for r in rs) for name, rs in runs.items() if rs
    }
    # the same repeat ran baseline and analyze back to back: their ratio is less exposed to load drift
    paired = {
        name: [
            a["files"] / a["seconds"] / (b["files"] / b["seconds"])
            for a, b in zip(runs[name], runs["baseline"], strict=False)
        ]
        for name in ("analyze", "analyze_1", "cli")
        if runs[name]
    }
    ratio = rate["analyze"] / rate["baseline"]
    ratio_1 = rate["analyze_1"] / rate["baseline"]
    ratio_cli = rate["cli"] / rate["baseline"] if "cli" in rate else None
    peak_big = _median(runs["analyze"], "rss_peak_kib")
    peak_small = _median(runs["analyze_small"], "rss_peak_kib")
    start_big = _median(runs["analyze"], "rss_start_kib")
    start_small = _median(runs["analyze_small"], "rss_start_kib")
    growth_per_file = (peak_big - peak_small) * 1024 / (args.files - args.small)
    per_instance = summary["source_bytes"] + summary["facts_bytes"] + summary["decide_transient_bytes"]
    memory_ok = growth_per_file <= 2 * per_instance
    foreign = [r["foreign_cores"] for rs in runs.values() for r in rs]
    loaded = sum(1 for rs in runs.values() for r in rs if r["foreign_cores"] > args.max_foreign)

    lines = [
        f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_mib']} MiB RAM, {machine['platform']}; "
        f"Python {machine['python']}, pydicom {machine['pydicom']}, numpy {machine['numpy']}, dicomcheck "
        f"{machine['dicomcheck']} "
        f"(git {machine['git'].get('head', '?')}"
        + (
            f", uncommitted changes in {', '.join(machine['git']['modified'])}"
            if machine["git"].get("modified")
            else ""
        )
        + ").",
        f"Study: {args.files} files ({studies[args.files]['series']}), mean {studies[args.files]['mean_file_bytes']} "
        "B/file "
        f"of which {studies[args.files]['mean_header_bytes']} B header; page cache warm (not dropped). "
        f"Medians of {args.repeats} repeats, each in a fresh process; load average before the repeats: "
        + ", ".join(f"{load[0]:.2f}" for load in loads)
        + f"; other processes used {statistics.mean(foreign):.2f} cores on average during the timed runs "
        f"(max {max(foreign):.2f}); {len(discarded)} measurement(s) taken again because other processes used "
        f"> {args.max_foreign} cores meanwhile (the discarded ones are in results.json)"
        + (f"; {loaded} kept measurement(s) still saw more (retries or time budget exhausted)" if loaded else "")
        + ".",
        "",
        "| run | files/s (median) | files/s (best) | seconds | ratio to baseline (median) | CPU ms/file (all "
        "processes) "
        "| peak RSS main (MiB) | peak RSS largest worker (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(label: str, name: str, children: bool = True) -> None:
        rs = runs[name]
        if not rs:
            return
        worker = _median(rs, "rss_children_peak_kib") if children and "rss_children_peak_kib" in rs[0] else None
        lines.append(
            f"| {label} | {rate[name]:.0f} | {best[name]:.0f} | {_median(rs, 'seconds'):.2f} | "
            f"{rate[name] / rate['baseline']:.2f} | {cpu_ms[name]:.3f} | "
            f"{_mib(_median(rs, 'rss_peak_kib'))} | {_mib(worker) if worker else '–'} |"
        )

    row("(a) baseline: `dcmread(stop_before_pixels=True)` loop", "baseline", children=False)
    row(f"(b) analyze pipeline, default workers ({runs['analyze'][0]['workers']})", "analyze")
    row("(c) analyze pipeline, `workers=1`", "analyze_1", children=False)
    if runs["cli"]:
        lines.append(
            f"| (d) CLI `python -m dicomcheck.cli analyze --format json DIR > /dev/null` (end to end, incl. start-up) "
            f"| {rate['cli']:.0f} | {best['cli']:.0f} | {_median(runs['cli'], 'seconds'):.2f} | {ratio_cli:.2f} | "
            f"{cpu_ms['cli']:.3f} | {_mib(_median(runs['cli'], 'rss_peak_kib'))} (largest of main and workers) | – |"
        )
    split = runs["analyze_1"]
    lines += [
        "",
        f"Where (c) spends its time (median): discover {_median(split, 'seconds_discover'):.2f} s, "
        f"read + extract {_median(split, 'seconds_read'):.2f} s, decide_studies "
        f"{_median(split, 'seconds_decide'):.3f} s.",
        f"Peak RSS of (b) across processes is at most main + {runs['analyze'][0]['workers']} × largest worker = "
        f"{_mib(peak_big + runs['analyze'][0]['workers'] * _median(runs['analyze'], 'rss_children_peak_kib'))} MiB "
        "(an upper bound: forked workers share the parent's pages).",
        "",
        f"**Ratio analyze / baseline: {ratio:.2f}** (default workers), {ratio_1:.2f} single core"
        + (f", {ratio_cli:.2f} CLI end to end" if ratio_cli else "")
        + f" — target ≥ 1.0: **{'met' if ratio >= 1.0 else 'NOT met'}**. "
        + "Paired per repeat: "
        + "; ".join(f"{name} " + ", ".join(f"{x:.2f}" for x in xs) for name, xs in paired.items())
        + f". Best-of ratio {best['analyze'] / best['baseline']:.2f}. "
        + f"CPU per header: analyze {cpu_ms['analyze_1'] / cpu_ms['baseline']:.2f}× the plain dcmread (single core), "
        + f"so even with perfect scaling over its {runs['analyze'][0]['workers']} workers the ratio would be about "
        + f"{runs['analyze'][0]['workers'] * cpu_ms['baseline'] / cpu_ms['analyze']:.2f} here "
        + "(workers × baseline CPU/file ÷ analyze CPU/file; CPU time is far less sensitive to other load than wall "
        "time).",
        "",
        "Memory growth (analyze pipeline, default workers, main process):",
        "",
        "| files | peak RSS (MiB) | RSS after imports (MiB) |",
        "|---:|---:|---:|",
        f"| {args.small} | {_mib(peak_small)} | {_mib(start_small)} |",
        f"| {args.files} | {_mib(peak_big)} | {_mib(start_big)} |",
        "",
        f"Growth: **{growth_per_file:.0f} B per extra file**; one instance's summaries: "
        f"Source {summary['source_bytes']} B (getsizeof) + InstanceFacts {summary['facts_bytes']} B (tracemalloc, as "
        "unpickled) "
        f"(pickled {summary['facts_pickle_bytes']} B) + decide_studies transient peak "
        f"{summary['decide_transient_bytes']} B "
        f"= {per_instance} B. Growth / summaries = {growth_per_file / per_instance:.2f} — "
        f"**{'≈ per-instance summaries (≤ 2×)' if memory_ok else 'MORE than the per-instance summaries'}**.",
    ]
    table = "\n".join(lines)
    print()
    print(table)
    results = {
        "machine": machine,
        "files": args.files,
        "small": args.small,
        "repeats": args.repeats,
        "studies": {str(k): v for k, v in studies.items()},
        "page_cache": "warm (every file read once before timing; caches not dropped)",
        "files_per_second": rate,
        "files_per_second_best": best,
        "cpu_ms_per_file": cpu_ms,
        "paired_ratios": paired,
        "load_average_before_repeats": loads,
        "ratio": ratio,
        "ratio_single_core": ratio_1,
        "ratio_cli": ratio_cli,
        "ratio_target_met": ratio >= 1.0,
        "memory": {
            "peak_rss_kib": {str(args.small): peak_small, str(args.files): peak_big},
            "growth_bytes_per_file": growth_per_file,
            "per_instance_summary": summary,
            "per_instance_bytes": per_instance,
            "growth_within_2x_summaries": memory_ok,
        },
        "runs": runs,
        "discarded_runs": discarded,
        "markdown": table,
        "benchmark_seconds": time.perf_counter() - wall,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out / 'results.json'} (benchmark took {results['benchmark_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
