"""The inequalities every SecAgg / SecAgg+ guarantee rests on, in one place.

SECURITY.md ("Thresholds against a deviating server") proves them; :class:`ThresholdBounds` states
them for one parameter set, names each one that fails, and computes the smallest number of honest
inputs in any sum a deviating server can learn. The parameter code refuses configurations that
violate them and the adversary search (``secagg.audit.search``) checks them independently, so the
three can be compared. Notation (fixed for the whole module):

- ``n`` registered clients, ``c`` of them corrupt (colluding with the server);
- ``h`` share holders per secret: ``n`` for the complete graph, ``k + 1`` for SecAgg+ (the ``k``
  neighbours and the client itself, which holds a share of its own secrets);
- ``t`` the Shamir threshold; ``c_nb`` the most corrupt holders any honest client can have
  (``c`` for the complete graph, the 2^-sigma tail bound ``t1`` for SecAgg+);
- ``q`` the signature quorum on the survivor set (malicious), the survivors needed otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ThresholdBounds"]


@dataclass(frozen=True)
class ThresholdBounds:
    """One parameter set, as the security argument sees it (no validation on construction).

    Args:
        num_clients: n.
        holders: h, share holders per secret (n, or k + 1).
        threshold: t.
        corrupt: c, corrupt clients assumed (the ``corrupt_bound``).
        corrupt_holders: c_nb, the most corrupt holders of one honest client's secrets.
        quorum: q, signatures needed on the survivor set (malicious) or survivors needed.
        malicious: whether the server may deviate.
    """

    num_clients: int
    holders: int
    threshold: int
    corrupt: int
    corrupt_holders: int
    quorum: int
    malicious: bool

    def min_honest_inputs(self) -> int:
        """The fewest honest inputs in any sum the server can compute (>= 2 means none alone).

        Semi-honest: the server follows the protocol and learns the sum over the survivor set, which
        holds at least ``q - c`` honest clients. Malicious (SECURITY.md, lemma "isolation"): to unmask
        a sum containing u the server needs u's self-mask seed, so t of u's h holders answer as if u
        survived (at most h - t of them are left out of the signed set A), and at most n - q honest
        clients are outside A at all. u masked with >= t - 1 holders, at most c_nb of them corrupt,
        so >= t - 1 - c_nb - min(h - t, n - q) honest survivors share with u a pairwise mask whose
        key the server cannot recover, and each must be in the sum too:
        ``max(2t - h, t + q - n) - c_nb`` inputs in all.
        """
        if not self.malicious:
            return max(1, self.quorum - self.corrupt)
        n, h, t = self.num_clients, self.holders, self.threshold
        return max(1, max(2 * t - h, t + self.quorum - n) - self.corrupt_holders)

    def violations(self) -> list[str]:
        """Every inequality these parameters break, each naming itself; empty when all hold."""
        n, h, t, c, cn, q = self.num_clients, self.holders, self.threshold, self.corrupt, self.corrupt_holders, self.quorum
        out = []
        if not 1 <= t <= h:
            out.append(f"1 <= t <= h: t={t} but each secret has h={h} share holders")
        if t <= cn:
            out.append(f"t > c_nb: t={t} <= {cn} corrupt share holders, who could reconstruct masks alone")
        if not self.malicious:
            return out
        if 2 * q <= n + c:
            out.append(f"2q > n + c: q={q}, n + c = {n + c}; two disjoint groups of honest clients could each "
                       "sign a different survivor set")
        if self.min_honest_inputs() < 2:
            out.append(
                f"max(2t - h, t + q - n) >= c_nb + 2: t={t}, h={h}, q={q}, n={n}, c_nb={cn}; a server that shows "
                "a client only t - 1 share holders and then calls the honest ones dropped recovers its input")
        return out
