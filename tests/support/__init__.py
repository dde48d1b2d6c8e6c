"""What tests share: ``settings`` (the one settings factory), ``items`` (points and queue
items), ``web`` (the one way to serve an aiohttp app on loopback), ``remotes`` (recording
remotes and fetch-entry builders) and ``daemon`` (running the ``vista`` command as a daemon).
The real servers are in :mod:`skyline.vista.testing.servers`, their fixtures in
``tests/conftest.py``."""
