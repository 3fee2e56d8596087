"""Tools that let an auditor check what a SecAgg server can learn, rather than take our word for it.

- :mod:`secagg.audit.attacks`: an adversarial-server harness; each attack states its expected
  outcome per threat model and checks it, including what actually leaked.
- :mod:`secagg.audit.transcript`: record every message a party sends and receives, in our wire
  format, and check a server's transcript (uniform masked inputs, no double share release, valid
  signatures, nothing revealed beyond the survivor set and the aggregate).
- :mod:`secagg.audit.dp_audit`: a one-run empirical lower bound on the epsilon of a distributed-DP
  configuration (canaries in one client's input, bound from :mod:`secagg.audit.one_run`).
- ``secagg audit attacks|transcript|record|search|dp`` on the command line (:mod:`secagg.audit.cli`).
"""

from __future__ import annotations
