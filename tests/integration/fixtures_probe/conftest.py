"""The probe runs only inside the sub-session of `test_fixtures.py`'s leak test.

That test sets `PIVOTAL_SYNC_TEST_FIXTURES_PROBE_REPORT`; every other session skips this directory.
"""

from __future__ import annotations

import os

REPORT_VARIABLE = "PIVOTAL_SYNC_TEST_FIXTURES_PROBE_REPORT"

collect_ignore_glob = [] if os.environ.get(REPORT_VARIABLE) else ["test_*.py"]
