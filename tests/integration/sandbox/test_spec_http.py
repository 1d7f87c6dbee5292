"""Section 8 of docs/pivotal-api.md over loopback HTTP: every test of the unit specification, re-run
against a real `pivotal-sync sandbox` process (the `api` fixture here speaks HTTP)."""

from tests.unit.sandbox.test_spec import *  # noqa: F403
