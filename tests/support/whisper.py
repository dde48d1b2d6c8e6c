"""Whisper history for backfill tests: a Graphite source whose whisper files are written
directly (graphite-web then reads them), and what a carbon stored, read back from its files."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from skyline.vista.testing.servers import SYSTEM_PYTHON, CarbonServer, GraphiteWebServer

RETENTION = "60s:35d"
"""The retention of the source and sink carbons (one archive: what is read is what was sent)."""

_WHISPER_WRITE = r"""
import json, os, struct, sys, whisper
root, spec = sys.argv[1], json.load(sys.stdin)
for path, points in spec.items():
    full = root + "/" + path
    os.makedirs(os.path.dirname(full), exist_ok=True)
    whisper.create(full, [(60, 35 * 1440)], xFilesFactor=0, aggregationMethod="average")
    # What update_many writes for consecutive steps (the first point is the archive's base),
    # in one write instead of its per-point work (40 s for the 50 files on a loaded machine).
    offset = whisper.info(full)["archives"][0]["offset"]
    data = struct.pack("!" + "Ld" * len(points), *[x for point in points for x in point])
    with open(full, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)
"""

_WHISPER_READ = r"""
import json, sys, time, whisper
root, start, end, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.load(sys.stdin)
out = {}
for name in names:
    path = root + "/" + name.replace(".", "/") + ".wsp"
    try:
        (first, last, step), values = whisper.fetch(path, start - 1, end)
    except (whisper.WhisperException, OSError):
        out[name] = []
        continue
    out[name] = [[first + i * step, v] for i, v in enumerate(values) if v is not None]
print(json.dumps(out))
"""


@contextmanager
def graphite_source(
    carbon_dir: Path, web_dir: Path, spec: Mapping[str, Sequence[tuple[int, float]]]
) -> Iterator[GraphiteWebServer]:
    """A real carbon-cache and graphite-web serving ``spec`` (whisper path, e.g.
    ``src/m01.wsp`` -> consecutive 60 s points), written before carbon starts."""
    carbon = CarbonServer(carbon_dir, retentions=RETENTION)
    carbon._prepare()  # whisper files first: carbon only serves them
    subprocess.run(
        [SYSTEM_PYTHON, "-c", _WHISPER_WRITE, str(carbon.whisper_dir)],
        input=json.dumps(spec),
        text=True,
        check=True,
        timeout=300,
    )
    carbon.start()
    web = GraphiteWebServer(web_dir, carbon)
    try:
        web.start()
        yield web
    finally:
        web.stop()
        carbon.stop()


def stored(
    carbon: CarbonServer, names: list[str], start: int, end: int
) -> dict[str, list[list[Any]]]:
    """name -> the [timestamp, value] points ``carbon`` stored in start..end."""
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-c", _WHISPER_READ, str(carbon.whisper_dir), str(start), str(end)],
        input=json.dumps(names),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    found: dict[str, list[list[Any]]] = json.loads(proc.stdout)
    return found
