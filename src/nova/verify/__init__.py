"""``nova verify``: completion checks of a deployment, from the outside (issue 9).

Each check is a small function returning ``Result(name, status, detail, hint)`` with status
pass | fail | warn | skip; ``verify(VerifyOptions)`` runs them all into a ``Report``
(``.table()``, ``.to_json()``, ``.ok``). See docs/operations/verify.md.
"""

from nova.verify.result import Report, Result, Status
from nova.verify.runner import VerifyOptions, verify

__all__ = ["Report", "Result", "Status", "VerifyOptions", "verify"]
