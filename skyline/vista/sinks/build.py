"""The sink the settings name (VISTA_SINK): Flux or carbon. Apart from the package's records and
protocol, so that a module that only speaks of points and results (:mod:`skyline.vista.delivery`)
does not import a sink's I/O (docs/architecture.md)."""

from __future__ import annotations

from skyline.vista.config import VistaConfig
from skyline.vista.sinks import Sink


def build_sink(config: VistaConfig) -> Sink:
    if config.sink == "flux":
        from skyline.vista.sinks.flux import FluxSink

        return FluxSink(config.flux)
    from skyline.vista.sinks.carbon import CarbonSink

    return CarbonSink(config.carbon)
