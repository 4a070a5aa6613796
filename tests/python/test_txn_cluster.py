"""Exactly-once consume-transform-produce on a 3-node cluster (txn_chaos.py): two
transactional pipelines in one consumer group while the node leading the transaction
coordinator's `__transaction_state` partition, then the leader of an output partition, then
the group coordinator's node are SIGKILLed and restarted, and pipeline instances crash on
purpose now and then. scripts/txn-chaos.py runs the same for longer, with every kind of
kill in turn."""

from txn_chaos import Plan, run, summary

KILLS = ["transaction coordinator", "output leader", "group coordinator"]


def test_consume_transform_produce_is_exactly_once_while_coordinators_and_leaders_are_killed(wharf_bin, tmp_path):
    plan = Plan(
        chaos_s=150,  # a bound; the run stops after its three kills
        kills=list(KILLS),
        max_kills=len(KILLS),
        kill_every_s=(2, 3),
        down_s=(4, 5),
        partitions=4,
        keys=100,
        prefill=1000,
        feed_per_s=40,
        pipelines=2,
        batch=50,
        crash_every_txns=8,
    )
    result = run(wharf_bin, tmp_path, plan)
    report = "\n".join(summary(result))
    print(report)
    assert [k.kind for k in result.kills] == KILLS, report
    assert result.violations == [], report
    assert result.inputs >= plan.prefill and result.outputs_committed == result.inputs, report
    for k in result.kills:
        assert result.stats.first_commit_after(k.at) is not None, f"nothing committed after {k}\n{report}"
