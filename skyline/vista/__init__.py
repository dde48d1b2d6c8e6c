"""Vista: fetch key metrics from remote Graphite and Prometheus servers and deliver them,
complete and exactly once, to Graphite (carbon) or Skyline Flux."""

from __future__ import annotations

__version__ = "0.1.0"
