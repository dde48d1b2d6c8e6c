"""The one table from ``remote_host_type`` to its :class:`~skyline.vista.sources.Source`."""

from __future__ import annotations

from collections.abc import Mapping

from skyline.vista.sources import Source, graphite, prometheus

SOURCES: Mapping[str, Source] = {
    "graphite": graphite.SOURCE,
    "prometheus": prometheus.SOURCE,
}
