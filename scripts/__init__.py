"""Operational scripts run by hand and by the integration tests: the load driver
(``scripts/load.py``) and the TCP proxy that cuts a service on demand
(``scripts/faultproxy.py``). See docs/operations.md."""
