"""Where history (points of a ``vista backfill``) is stored, so that it is really kept.

History never goes through the live queue and never touches a watermark: the live fetcher and
the workers go on as if no backfill ran, and a watermark never moves backwards.

* Carbon sink: straight to carbon (``CARBON_HOST``/``CARBON_PICKLE_PORT``). Carbon keeps one
  value per (metric, timestamp): history can be loaded again over what is there.
* Flux sink: Flux's worker treats old points by its ``FLUX_CHECK_LAST_TIMESTAMP`` setting (see
  ``docs/skyline-compatibility.md``, "What Flux does with flux.last"), which Vista's setting of
  the same name mirrors:

  - ``True`` (Flux's default): a point POSTed with ``fill`` is accepted and never checked
    against ``flux.last``, so history is POSTed to Flux with ``fill`` on every point (450 points
    a request, as live delivery);
  - ``False``: Flux checks every point of a metric in ``vista.metrics``, ``fill`` or not, and
    drops those at or below ``flux.last``: all history of a metric already delivered. History
    then goes to the carbon beside Flux (``FLUX_CARBON_HOST``/``FLUX_CARBON_PICKLE_PORT``, by
    default ``CARBON_HOST``/``CARBON_PICKLE_PORT``), where Flux itself sends its points.

``vista check-config`` says which path history takes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from skyline.vista.config import CarbonConfig, VistaConfig
from skyline.vista.secret import Secret
from skyline.vista.sinks import Sink


@dataclass(frozen=True)
class HistoryPath:
    kind: Literal["carbon", "flux-fill", "carbon-beside-flux"]
    description: str


def history_path(config: VistaConfig) -> HistoryPath:
    if config.sink == "graphite":
        host, port = config.carbon.address
        return HistoryPath(
            "carbon", f"straight to carbon at {host}:{port} ({config.carbon.protocol})"
        )
    if config.flux_check_last_timestamp:
        return HistoryPath(
            "flux-fill",
            f"POST to Flux at {config.flux.url} with fill on every point "
            "(FLUX_CHECK_LAST_TIMESTAMP = True: Flux never checks them against flux.last)",
        )
    host, port = history_carbon(config).address
    return HistoryPath(
        "carbon-beside-flux",
        f"to the carbon beside Flux at {host}:{port} (FLUX_CHECK_LAST_TIMESTAMP = False: Flux "
        "would drop points at or below flux.last even with fill)",
    )


def history_carbon(config: VistaConfig) -> CarbonConfig:
    """The carbon that history goes to when it does not go through Flux."""
    if config.sink == "graphite":
        return config.carbon
    return replace(
        config.carbon,
        host=config.flux_carbon_host or config.carbon.host,
        pickle_port=config.flux_carbon_pickle_port or config.carbon.pickle_port,
        protocol="pickle",
    )


def build_history_sink(
    config: VistaConfig, *, flux_key: Secret | None = None, flux_test: bool = False
) -> Sink:
    """The sink that really stores history (see :func:`history_path`). On the Flux path every
    point carries ``fill``; ``flux_key`` replaces ``FLUX_SELF_API_KEY`` (a BigQuery account's
    ``flux_api_token``, so Flux applies the token's namespace). ``flux_test`` always POSTs to
    Flux, with Flux's ``x-test-only`` header (Flux counts and stores nothing)."""
    if flux_test or history_path(config).kind == "flux-fill":
        import requests

        from skyline.vista.sinks.flux import FluxSink

        # A max age of 0: every point is older than it, so every point carries fill.
        flux = replace(config.flux, max_age=0)
        if flux_key is not None:
            flux = replace(flux, key=flux_key)
        session = requests.Session()
        if flux_test:
            session.headers["x-test-only"] = "true"
        return FluxSink(flux, session=session)
    from skyline.vista.sinks.carbon import CarbonSink

    return CarbonSink(history_carbon(config))
