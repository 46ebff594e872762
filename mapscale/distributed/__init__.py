"""Distribution wraps the single-device method from outside (DESIGN.md section 4): the world, the sharding
plan, the collectives with autograd, each rank's `Shard` of the mapping and the multi-rank training glue."""

from mapscale.distributed.collectives import gather_rows
from mapscale.distributed.plan import Segment, ShardPlan, ShardUnit
from mapscale.distributed.sharding import shard_of, sharding
from mapscale.distributed.world import World

__all__ = ["Segment", "ShardPlan", "ShardUnit", "World", "gather_rows", "shard_of", "sharding"]
