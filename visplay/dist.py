"""Which process this is: rank, world size and local rank under `accelerate launch` / torchrun, else (0, 1, 0).

`visplay evolve` runs the same loop on every rank (docs/scaling.md): GRPO phases are data
parallel through TRL/accelerate, generation and labeling take every world-th item
(`visplay.evolve.shards`), and only the main rank writes the run directory. `barrier` and
`broadcast` are no-ops in a single process. Test: `pytest tests/test_shards.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world or self.local_rank < 0:
            raise ValueError(f"need 0 <= rank < world and local_rank >= 0, got {self}")

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = Ranks()


def current() -> Ranks:
    """This process's ranks; initialises the process group when a launcher set one up (gloo on
    CPU-only machines, e.g. `torchrun --nproc_per_node 2` in tests)."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Ranks(state.process_index, state.num_processes, state.local_process_index)


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def broadcast(ranks: Ranks, value: Any) -> Any:
    """The main rank's ``value`` on every rank (picklable values)."""
    if ranks.world == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]
