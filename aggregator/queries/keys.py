"""SQL of the API keys table (migration 5, ``meterline/store/migrations.py``).

``api_keys`` is a ReplacingMergeTree on ``Version``: a key's active row (0) is replaced
by its revoked row (1). Every read uses ``FINAL``, so the newest state is what a read
sees even before the engine merged the rows; both rows of a key carry the same hash, so
filtering on it before or after the merge gives the same answer.
"""

from __future__ import annotations

KEY_COLUMNS = (
    "KeyId",
    "KeyHash",
    "ConsumerId",
    "Scopes",
    "Name",
    "CreatedAt",
    "ExpiresAt",
    "RevokedAt",
    "Version",
)

_SELECT = (
    "SELECT KeyId, KeyHash, ConsumerId, Scopes, Name, CreatedAt, ExpiresAt, RevokedAt\n"
    "FROM {db}.api_keys FINAL\n"
)

BY_HASH_SQL = _SELECT + "WHERE KeyHash = {hash:String}"
"""The key whose secret hashes to ``hash`` (at most one: keys are 256-bit random)."""

BY_ID_SQL = _SELECT + "WHERE KeyId = {id:String}"
"""One key by id."""

LIST_SQL = (
    _SELECT + "WHERE ({all:UInt8} OR ConsumerId = {consumer:String})\nORDER BY CreatedAt, KeyId"
)
"""Every key (or one consumer's), oldest first."""
