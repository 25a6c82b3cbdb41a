"""The in-process ``analyze`` pipeline on one core, for profiling.

    python -m cProfile -s cumtime bench/profile_analyze.py bench/out/study-5000 | head -60
    python -m cProfile -s tottime bench/profile_analyze.py bench/out/study-5000 | head -60

(create the study first: ``python bench/make_study.py 5000 bench/out/study-5000`` or run
``bench/bench_analyze.py`` once).
"""

from __future__ import annotations

import sys

from dicomcheck.analysis import decide_studies
from dicomcheck.model import InstanceFacts
from dicomcheck.sources import discover, read_all


def main(folder: str) -> None:
    sources, errors = discover([folder])
    facts = [r for r in read_all(sources, workers=1) if isinstance(r, InstanceFacts)]
    studies = decide_studies(facts)
    print(
        f"{len(sources)} files, {len(facts)} instances, {len(studies)} studies, {len(errors)} errors", file=sys.stderr
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/out/study-5000")
