"""The bench's reading of svc_message's write counters and its per-send figures."""

from __future__ import annotations

from parley_dev.bench.db_writes import (
    parse_documents_written,
    parse_write_commands,
    per_operation,
)

PAGE = """# HELP parley_db_write_commands_total Write commands sent to MongoDB
# TYPE parley_db_write_commands_total counter
parley_db_write_commands_total{collection="messages",op="insert"} 40.0
parley_db_write_commands_total{collection="members",op="update"} 7.0
parley_db_documents_written_total{collection="messages",op="insert"} 1000.0
parley_db_documents_written_total{collection="members",op="update"} 150.0
parley_db_documents_written_created 1.7e9
"""


def test_counters_are_read_per_collection_and_op() -> None:
    assert parse_write_commands(PAGE) == {"messages/insert": 40, "members/update": 7}
    assert parse_documents_written(PAGE) == {"messages/insert": 1000, "members/update": 150}


def test_per_send_figures_are_the_phase_difference_over_its_sends() -> None:
    before = {"messages/insert": (10, 200), "members/update": (7, 150)}
    after = {
        "messages/insert": (50, 1200),
        "members/update": (7, 150),
        "conversations/update": (2, 64),
    }
    assert per_operation(before, after, 1000) == {
        "conversations/update": {"commands": 0.002, "documents": 0.064},
        "messages/insert": {"commands": 0.04, "documents": 1.0},
    }
    assert per_operation(before, after, 0) == {}
