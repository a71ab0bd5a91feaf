"""Online features: an entity's newest feature values from the FeatureJob's online store (Redis).

The store's layout and its reading are the FeatureJob's (`gyre.pipelines.features.online`):
one hash per entity, JSON values, the row's TTL enforced on read. All entities of a batch are
read in one round trip. A value the store lacks (an unknown entity, an expired row, a feature
not written) is None, which the artifact's preprocessing imputes (the training mean, or the
unknown category).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gyre.pipelines.features.online import read_online_features
from redis.asyncio import Redis


async def get_online_features(
    client: Redis, key_prefix: str, entities: Sequence[str], features: Sequence[str]
) -> list[dict[str, Any]]:
    """Per entity, in order: feature name → its value in the store, or None (missing, expired)."""
    if not entities or not features:
        return [dict.fromkeys(features) for _ in entities]
    rows = await read_online_features(client, key_prefix, entities, features)
    return [{name: v.value for name, v in row.values.items()} for row in rows]
