"""For development only, never imported by Vista itself: real servers (redis-server,
Prometheus, carbon-cache, graphite-web) started on loopback for the tests, the benchmarks and
the demo (``bin/vista-demo``). See :mod:`skyline.vista.testing.servers`."""
