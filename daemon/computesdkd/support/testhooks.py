"""TEST-ONLY: kill -9 of the daemon at a named step, for tests/security.

With COMPUTESDK_TEST_CRASH_AT=STEP (or STEP#N), the daemon SIGKILLs itself the
first (or N-th) time it passes STEP, as a crash or an OOM kill would: no
cleanup, no flush. Nothing sets it outside the test suite; unset, crash() is a
string comparison. Steps: the generic ones host.py passes after each helper
succeeds (`loop.attached`, `mount.<fstype>`, `umount`, `run.<tool>`,
`run.runc.<command>`), and a few named ones (`create.disk`, `create.provisioned`,
`destroy.stopping`, `destroy.halted`, `clone.snapshot`).
"""

from __future__ import annotations

import os
import signal

_STEP, _, _NTH = os.environ.get("COMPUTESDK_TEST_CRASH_AT", "").partition("#")
_passed = 0


def crash(step: str) -> None:
    global _passed
    if not _STEP or step != _STEP:
        return
    _passed += 1
    if _passed == int(_NTH or 1):
        os.kill(os.getpid(), signal.SIGKILL)
