"""`kvmtimer guests` labels (controller.cli.views): what the user sees of each guest's state.

Edge cases covered:
- running and creating guests on answering nodes are shown as such
- a lost guest shows its reason (or LOST alone), whatever its node's health
- a guest whose node does not answer is shown waiting (the controller decides nothing about it),
  in the table too; a guest on another node is unaffected
"""

from __future__ import annotations

from kvmtimer.v1 import controller_pb2 as cpb

from controller.cli.views import guest_state_label, guests_table


def guest(state: cpb.GuestState, node_id: str = "a", reason: str = "") -> cpb.Guest:
    return cpb.Guest(guest_id="g", node_id=node_id, vm_id="g@1", vcpus=1, state=state, state_reason=reason)


def test_labels_on_answering_nodes() -> None:
    assert guest_state_label(guest(cpb.GUEST_STATE_RUNNING)) == "running"
    assert guest_state_label(guest(cpb.GUEST_STATE_CREATING), down={"b"}) == "creating"
    assert guest_state_label(guest(cpb.GUEST_STATE_LOST, reason="node a no longer has VM g@1")) == (
        "LOST (node a no longer has VM g@1)"
    )
    assert guest_state_label(guest(cpb.GUEST_STATE_LOST), down={"a"}) == "LOST"


def test_a_guest_on_a_silent_node_is_shown_waiting() -> None:
    waiting = "? (node a DOWN: waiting)"
    assert guest_state_label(guest(cpb.GUEST_STATE_RUNNING), down={"a"}) == "running" + waiting
    assert guest_state_label(guest(cpb.GUEST_STATE_CREATING), down={"a"}) == "creating" + waiting
    text = guests_table([guest(cpb.GUEST_STATE_RUNNING), guest(cpb.GUEST_STATE_RUNNING, "b")], down={"b"})
    rows = text.splitlines()
    assert "node b DOWN: waiting" in rows[-1] and "waiting" not in rows[-2]
