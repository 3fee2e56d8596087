"""Distributed DP on the real protocol: the released sum carries the planned noise, the ring is as
narrow as planned on the wire, the survivor floor is enforced by clients, the spec is bound into the
session, and the CLI contract holds."""

from __future__ import annotations

import json

import numpy as np
import pytest

import secagg
from secagg import ParameterError, SecAggConfig, ThreatModel
from secagg.audit.adversarial_server import AdversarialServer
from secagg.audit.adversary import play
from secagg.cli import main
from secagg.dp.encoding import DpEncoding
from secagg.dp.plan import plan
from secagg.protocols.secagg.common import setup_id

THREAT = ThreatModel.semi_honest(0.1, 0.2)


def _config(n: int = 8, d: int = 300, floor: int = 6) -> SecAggConfig:
    schema = secagg.Schema.of(np.zeros(d))
    spec = plan(4.0, 1e-5, 1, n, floor - 1, d, 1.0).spec
    return SecAggConfig.for_protocol("secagg", n, schema, THREAT, DpEncoding(spec, d, n, floor))


def test_simulate_with_dp_measures_the_planned_noise_at_the_planned_width(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--protocol", "secagg+", "--clients", "20", "--dim", "20000", "--dropout", "0.1",
                 "--dp", "ddgauss", "--epsilon", "2", "--seed", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    dp = out["dp"]
    for field in ("measured_noise_std", "planned_noise_std", "epsilon", "delta", "bits"):
        assert field in dp
    assert out["exact"] is True and dp["epsilon"] <= 2.0 and dp["bits"] == out["ring_bits"]
    assert abs(dp["measured_noise_std"] / dp["planned_noise_std"] - 1) < 0.05  # 20000 coordinates
    assert out["bytes_per_parameter"] == pytest.approx(dp["bits"] / 8, rel=0.06)
    assert out["max_abs_error"] <= out["error_bound"]


@pytest.mark.parametrize("args, why", [
    (["--protocol", "ckks", "--dp", "ddgauss", "--epsilon", "2"], "secagg and secagg+ only"),
    (["--dp", "ddgauss"], "go together"),
    (["--epsilon", "2"], "go together"),
])
def test_simulate_refuses_dp_it_cannot_honour(capsys: pytest.CaptureFixture[str], args: list[str], why: str) -> None:
    assert main(["simulate", "--clients", "6", "--dim", "50", *args, "--json"]) == 2
    err = capsys.readouterr().err
    assert why in err and len(err.strip().splitlines()) == 1


def test_a_dp_round_releases_the_clipped_sum_plus_noise() -> None:
    config = _config()
    rng = np.random.default_rng(5)  # ok: test inputs, recorded seed
    inputs = {i: rng.normal(0, 0.05, 300) for i in range(8)}
    server = secagg.new_server(config, round_number=1, context=b"m")
    clients = {i: secagg.new_client(config, i, round_number=1, context=b"m") for i in range(8)}
    for i, c in clients.items():
        c.set_input(inputs[i])
        with pytest.raises(ParameterError, match="weight is 1"):
            c.set_input(inputs[i], weight=2)
    result = secagg.run_round(server, clients, {7: "mask"}).result
    assert result.weight_sum == 7 and result.survivors == tuple(range(7))
    exact = sum(inputs[i] for i in range(7))  # norms are below the clip: clipping changes nothing
    assert np.abs(result.weighted_sum - exact).max() <= result.error_bound * result.weight_sum


def test_clients_refuse_to_unmask_a_dp_sum_with_fewer_survivors_than_the_floor() -> None:
    """A server that pretends two masked inputs never arrived (leaving 6 < floor 7 survivors) gets no
    unmasking shares: the noise of at least floor honest clients is the guarantee."""
    config = _config(floor=7)
    server = AdversarialServer(config, round_number=1, context=b"m")
    server.forget_masked({0, 1})
    clients = {i: secagg.new_client(config, i, round_number=1, context=b"m") for i in range(8)}
    for i, c in clients.items():
        c.set_input(np.full(300, 0.01))
    log = play(server, clients)
    assert log.result is None and server.responses == []
    refused = [r for r in log.refusals.values() if "a DP sum is released with at least 7" in r]
    assert len(refused) == 6


def test_the_dp_spec_is_bound_into_the_session() -> None:
    a, b = _config(floor=6), _config(floor=7)
    assert setup_id(a, 0, b"m") != setup_id(b, 0, b"m")
    with pytest.raises(ParameterError, match="min_survivors"):
        DpEncoding(a.encoding.spec, 300, 8, 9)  # type: ignore[union-attr]


def test_an_alive_list_padded_with_unknown_ids_gets_no_share() -> None:
    """Red-team finding: the floor counted len(alive), so a server padding alive with ids outside the
    key list (or with clients this client never shared with) had a sum of t inputs unmasked."""
    from secagg.audit.adversary import replace_body

    config = _config(floor=7)
    server = AdversarialServer(config, round_number=1, context=b"m", script={
        "mask": lambda s, outbox: s.rewrite(outbox, set(outbox), lambda body: replace_body(
            body, alive=tuple(sorted(set(body.alive) | {1000, 1001, 1002}))))})  # type: ignore[attr-defined]
    server.forget_masked({0, 1, 2})
    clients = {i: secagg.new_client(config, i, round_number=1, context=b"m") for i in range(8)}
    for c in clients.values():
        c.set_input(np.full(300, 0.01))
    log = play(server, clients)
    assert log.result is None and server.responses == []
    assert any("outside the key list" in r for r in log.refusals.values())


def test_the_accountant_counts_at_most_l_honest_inputs_against_a_malicious_server() -> None:
    schema = secagg.Schema.of(np.zeros(10))
    for protocol in ("secagg", "secagg+"):
        config = SecAggConfig.for_protocol(protocol, 20, schema, ThreatModel.malicious(0.1, 0.1))
        l = config.bounds().min_honest_inputs()
        assert config.honest_noise_count(20) == min(20 - config.corrupt_bound, l) == l
        semi = SecAggConfig.for_protocol(protocol, 20, schema, ThreatModel.semi_honest(0.1, 0.1))
        assert semi.honest_noise_count(18) == 18 - semi.corrupt_bound
