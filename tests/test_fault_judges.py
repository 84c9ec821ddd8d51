"""The fault matrix's deployment cases pass on outcomes only: what the run recorded, against the control."""

from benchmarks.fault_deployment import judge_killed, judge_spoofed

SPOOFER, BOUND = "77", "11"


def row(server_round: int, **accuracies: float) -> dict:
    return {"round": server_round, "global_acc_pooled": sum(accuracies.values()) / len(accuracies),
            **{f"global_acc_{d}": a for d, a in accuracies.items()}}


CONTROL = {"rounds": [row(0, mnist=0.8, digits=0.6, fonts=0.5), row(1, mnist=0.9, digits=0.7, fonts=0.6)]}


def killed_run(events: list[dict], fonts_last: float = 0.6) -> dict:
    return {"rounds": [row(0, mnist=0.8, digits=0.6, fonts=0.5), row(1, mnist=0.9, fonts=fonts_last)],
            "events": events}


MISSING = {"kind": "clients_missing", "round": 1, "clients": ["digits"], "reason": "1 of 3 clients did not connect"}


def test_a_killed_node_named_with_its_reason_and_the_others_kept_passes():
    assert judge_killed(killed_run([MISSING]), 1, CONTROL, 0.05) == []


def test_a_killed_node_nobody_named_or_survivors_hurt_fail():
    assert judge_killed(killed_run([]), 1, CONTROL, 0.05) == ["no event names 'digits' with a reason"]
    failed_fonts = {"kind": "client_failed", "round": 1, "client": "fonts", "reason": "timeout"}
    assert judge_killed(killed_run([MISSING, failed_fonts]), 1, CONTROL, 0.05) == [
        "client_failed in round 1 names fonts"]
    [problem] = judge_killed(killed_run([MISSING], fonts_last=0.3), 1, CONTROL, 0.05)
    assert "final accuracy 0.600 is more than 0.05 below the control's 0.750" in problem
    assert "round 2 not recorded" in judge_killed(killed_run([MISSING]), 2, CONTROL, 0.05)


def refusal(kind: str, server_round: int, node: str = SPOOFER) -> dict:
    return {"kind": kind, "round": server_round, "client": f"node {node}", "claimed": "mnist",
            "reason": f"node {node} claims client 'mnist', which train.identity-file binds to node {BOUND}"}


SPOOFED = {"rounds": CONTROL["rounds"],
           "events": [refusal("upload_refused", 0), refusal("upload_refused", 1), refusal("eval_refused", 0)]}


def test_a_spoofer_refused_in_round_zero_and_later_passes():
    assert judge_spoofed(SPOOFED, 1, CONTROL, 0.05, SPOOFER, BOUND) == []


def test_a_spoofer_accepted_in_a_round_or_another_loss_fails():
    only_round_zero = {**SPOOFED, "events": [refusal("upload_refused", 0), refusal("eval_refused", 0)]}
    assert judge_spoofed(only_round_zero, 1, CONTROL, 0.05, SPOOFER, BOUND) == [
        "the spoofer's uploads were refused in rounds [0], not in round 0 and later"]
    own_node_refused = {**SPOOFED, "events": [*SPOOFED["events"], refusal("upload_refused", 1, node=BOUND)]}
    [problem] = judge_spoofed(own_node_refused, 1, CONTROL, 0.05, SPOOFER, BOUND)
    assert problem.startswith("upload_refused in round 1: node 11 claims")
    no_mnist = {**SPOOFED, "rounds": [CONTROL["rounds"][0], row(1, digits=0.7, fonts=0.6)]}
    assert "round 1: 'mnist' not evaluated" in judge_spoofed(no_mnist, 1, CONTROL, 0.05, SPOOFER, BOUND)
