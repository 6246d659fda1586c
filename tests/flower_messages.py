"""Flower replies as a ServerApp strategy receives them, for tests of the server side."""

from __future__ import annotations

import time

from flwr.app import Message, MessageType, Metadata, RecordDict


def reply_metadata(node: int, message_type: str = MessageType.TRAIN) -> Metadata:
    """The metadata of node `node`'s reply to the server (node 0)."""
    return Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="x",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type=message_type,
    )


def reply_message(node: int, content: RecordDict, message_type: str = MessageType.TRAIN) -> Message:
    return Message(content=content, metadata=reply_metadata(node, message_type))
