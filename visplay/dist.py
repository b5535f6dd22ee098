"""Which process this is: rank, world size and local rank under `accelerate launch` / torchrun, else (0, 1, 0).

`visplay evolve` is one controller process; only a GRPO phase run through ``hardware.launcher``
runs on several ranks (`visplay.evolve.worker grpo`: data parallel through TRL/accelerate, the
main rank saves), and a generation shard is told its rank on the command line
(`visplay.evolve.shards`). `barrier` is a no-op in a single process.
Test: `pytest tests/test_shards.py`.
"""

from __future__ import annotations

from dataclasses import dataclass


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
