"""BigQuery source: account settings → queries → rows → points, archives, jobs and schedule.

Pure parts (``names``, ``rows``, ``query``, ``cron``) have no I/O; ``credentials`` and
``client`` talk to Google (only imported when an account exists: the ``bigquery`` extra).
"""
