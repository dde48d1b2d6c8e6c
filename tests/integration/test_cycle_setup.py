"""The Fetcher and ``vista fetch --once`` set up a cycle the same way (cycle_setup.py): a
templated entry's names start after their own watermarks in both."""

from __future__ import annotations

import time

from skyline.vista import constants, expand
from skyline.vista.fetch_once import fetch_once
from tests.conftest import PrometheusFactory
from tests.support.cycle import queued_chain
from tests.support.rig import Rig


def test_fetch_once_starts_each_name_of_a_templated_entry_after_its_watermark(
    rig: Rig, tmp_prometheus: PrometheusFactory
) -> None:
    minute = int(time.time()) // 60 * 60
    first = minute - 1800
    lines = [
        f'vista_tmpl{{instance="{i}"}} {ts // 60 % 1000 + 0.5} {ts}'
        for i in "ab"
        for ts in range(first, minute, 60)
    ]
    prom = tmp_prometheus(history="\n".join(lines) + "\n# EOF\n")
    entry = {
        "remote_host": prom.url,
        "remote_host_type": "prometheus",
        "remote_target": "vista_tmpl",
        "graphite_target": "{instance}",
        "namespace_prefix": "tmpl",
    }
    cfg = rig.config([entry])
    # Both names were delivered up to 10 minutes ago, by the Fetcher's earlier cycles.
    mark = minute - 600
    names = ["tmpl.a", "tmpl.b"]
    entry_metric = cfg.fetch_metrics[0].metric
    rig.redis.hset(expand.key(entry_metric), mapping={n: repr(time.time()) for n in names})
    for name in names:
        rig.redis.hset(constants.WATERMARK_HASH, name, f'{{"timestamp": {mark}, "value": 1}}')

    assert fetch_once(cfg, dry_run=False) == constants.EXIT_OK

    for name in names:
        points = [p for item in queued_chain(rig.redis, name) for p in item.points]
        assert points, name
        assert points[0][0] == mark + 60, (name, points[:2])  # nothing at or below the mark
