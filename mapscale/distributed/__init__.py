"""Distribution wraps the single-device method from outside (DESIGN.md section 4).

Landed so far: the world object, the sharding plan and the collective autograd functions. The sharded
generator and the trainer's multi-rank path are still to come (the trainer refuses WORLD_SIZE > 1).
"""

from mapscale.distributed.collectives import gather_rows
from mapscale.distributed.plan import Segment, ShardPlan, ShardUnit
from mapscale.distributed.world import World

__all__ = ["Segment", "ShardPlan", "ShardUnit", "World", "gather_rows"]
