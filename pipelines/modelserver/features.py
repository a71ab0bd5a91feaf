"""Online features: an entity's newest feature values from the FeatureJob's online store (Redis).

`get_online_features` is the one place that knows the store's layout: a Redis hash per entity,
``<key_prefix><entity>``, one field per feature, values as text. All entities of a batch are
read in one round trip (a pipeline of ``HMGET``). A feature the store lacks (an unknown entity,
an expired row, a feature not written) is None, which the artifact's preprocessing imputes
(the training mean, or the unknown category).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis


async def get_online_features(
    client: Redis, key_prefix: str, entities: Sequence[str], features: Sequence[str]
) -> list[dict[str, str | None]]:
    """Per entity, in order: feature name → its value in the store as text, or None."""
    if not entities or not features:
        return [dict.fromkeys(features) for _ in entities]
    pipe = client.pipeline(transaction=False)
    for entity in entities:
        pipe.hmget(f"{key_prefix}{entity}", list(features))
    replies: list[list[Any]] = await pipe.execute()
    return [
        {name: (v.decode() if isinstance(v, bytes) else v) for name, v in zip(features, values, strict=True)}
        for values in replies
    ]
