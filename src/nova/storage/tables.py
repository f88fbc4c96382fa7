"""Table definitions (SQLAlchemy Core). Times are integer milliseconds since the epoch (UTC),
which both dialects store and compare the same way; the wire format is made at the edge."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = String(40)
# BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite so that autoincrement works.
BigId = BigInteger().with_variant(Integer(), "sqlite")

users = Table(
    "users",
    metadata,
    Column("id", ID, primary_key=True),
    Column("username", String(64), nullable=False),
    Column("username_key", String(64), nullable=False, unique=True),  # lower-cased
    Column("display_name", String(128), nullable=False),
    Column("password_hash", String(255), nullable=True),  # NULL: externally authenticated
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
    Column("last_seen_at", BigInteger, nullable=True),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # sha256 of the opaque token
    Column("family_id", ID, nullable=False, index=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("used_at", BigInteger, nullable=True),
    Column("revoked_at", BigInteger, nullable=True),
)

conversations = Table(
    "conversations",
    metadata,
    Column("id", ID, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("title", String(200), nullable=True),
    Column("direct_key", String(90), nullable=True, unique=True),  # "<a>:<b>" for direct pairs
    Column("created_by", ID, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False, default=0),
    Column("last_message_id", ID, nullable=True),
)
Index("ix_conversations_activity", conversations.c.updated_at, conversations.c.id)

members = Table(
    "members",
    metadata,
    Column("conversation_id", ID, ForeignKey("conversations.id", ondelete="CASCADE"),
           primary_key=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("last_read_seq", BigInteger, nullable=False, default=0),
    Column("joined_at", BigInteger, nullable=False),
)
Index("ix_members_user", members.c.user_id, members.c.conversation_id)

# Which slice of the event log a member may see: events of the conversation with
# from_pos <= pos <= to_pos (to_pos NULL while still a member).
membership_periods = Table(
    "membership_periods",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("conversation_id", ID, nullable=False),
    Column("user_id", ID, nullable=False),
    Column("from_pos", BigInteger, nullable=False),
    Column("to_pos", BigInteger, nullable=True),
)
Index("ix_membership_periods_user", membership_periods.c.user_id,
      membership_periods.c.conversation_id)
Index("ix_membership_periods_conversation", membership_periods.c.conversation_id)

messages = Table(
    "messages",
    metadata,
    Column("id", ID, primary_key=True),
    Column("conversation_id", ID, ForeignKey("conversations.id", ondelete="CASCADE"),
           nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("sender_id", ID, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("body", Text, nullable=True),
    Column("client_msg_id", String(64), nullable=False),
    Column("reply_to", ID, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("edited_at", BigInteger, nullable=True),
    Column("deleted", Boolean, nullable=False, default=False),
    UniqueConstraint("conversation_id", "seq"),
    UniqueConstraint("sender_id", "client_msg_id"),
)

# The durable event log. ``pos`` is the cursor: positions become visible in increasing
# order (see SqlStore.append_events), so a reader never skips one that commits later.
events = Table(
    "events",
    metadata,
    Column("pos", BigId, primary_key=True, autoincrement=True),
    Column("conversation_id", ID, nullable=True),  # audience: members at pos
    Column("user_id", ID, nullable=True),  # audience: this user only (when set)
    Column("type", String(32), nullable=False),
    Column("payload", Text, nullable=False),  # the event object as JSON, serialized once
    Column("created_at", BigInteger, nullable=False),
    sqlite_autoincrement=True,  # never reuse a position, even after retention pruning
)
Index("ix_events_conversation_pos", events.c.conversation_id, events.c.pos)
Index("ix_events_user_pos", events.c.user_id, events.c.pos)

calls = Table(
    "calls",
    metadata,
    Column("id", ID, primary_key=True),
    Column("conversation_id", ID, ForeignKey("conversations.id", ondelete="CASCADE"),
           nullable=False),
    Column("initiator_id", ID, nullable=False),
    Column("media", String(8), nullable=False),
    Column("state", String(16), nullable=False),
    Column("participants", Text, nullable=False),  # JSON list of {user_id, state}
    Column("live_key", ID, nullable=True, unique=True),  # conversation_id while not ended
    Column("created_at", BigInteger, nullable=False),
    Column("answered_at", BigInteger, nullable=True),
    Column("ended_at", BigInteger, nullable=True),
    Column("end_reason", String(16), nullable=True),
)
Index("ix_calls_conversation", calls.c.conversation_id, calls.c.created_at)

meta = Table(
    "nova_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
