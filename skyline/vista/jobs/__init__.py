"""On-demand jobs (history backfill, BigQuery) run by the agent in supervised processes.

* :mod:`.record`: the typed job record (JSON; Skyline's Python-literal records are read too);
* :mod:`.store`: the records in Redis under each kind's keys, with atomic transitions;
* :mod:`.registry`: the kinds (name, keys, entry point, how many at once);
* :mod:`.context`: what an entry point gets (``checkpoint``, ``progress``, ``should_stop``);
* :mod:`.process`: the job's own process and how its end is recorded;
* :mod:`.supervisor`: the agent's side (claim, start, give back a dead job, prune);
* :mod:`.display`: ``vista jobs`` and the ``--wait`` progress display.
"""
