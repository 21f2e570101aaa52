"""The web dashboard: jobs, runs, registry, monitoring, data and chat in one page served at `/`."""
