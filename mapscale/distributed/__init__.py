"""Distribution wraps the single-device method from outside (DESIGN.md section 4): the world, the sharding
plan, the collectives with autograd, the sharded generator that wraps any method's generator, and the
multi-rank training glue."""

from mapscale.distributed.collectives import gather_rows
from mapscale.distributed.plan import Segment, ShardPlan, ShardUnit
from mapscale.distributed.sharded import Sharded, part_of, shard
from mapscale.distributed.world import World

__all__ = ["Segment", "ShardPlan", "ShardUnit", "Sharded", "World", "gather_rows", "part_of", "shard"]
