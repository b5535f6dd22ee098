"""The loop's seed strides, in one table: how one run seed becomes many sampling streams.

Primes, so that the streams they start never line up:

    chunk i of a chunked stage (questions, labels)    stage seed + CHUNK_SEED_STRIDE * i
    rank r of a launched GRPO phase (frozen reasoner) reward seed + RANK_SEED_STRIDE * r
    committee member i (0: the reasoner)              (chunk seed + MEMBER_SEED_STRIDE * i) mod 2**31

and the world's scenes:

    run seed s draws the unlabeled scenes from       s * WORLD_SEED_SCENES
    replay scenes (`visplay.config.Config.scene_world`) from REPLAY_START + s * WORLD_SEED_SCENES

Test: `pytest tests/test_committee.py tests/test_modes.py`.
"""

CHUNK_SEED_STRIDE = 7919
RANK_SEED_STRIDE = 100003
MEMBER_SEED_STRIDE = 1_000_003
#: world scene indices from here on are replay scenes, far above any run's draws
REPLAY_START = 10**9
#: run seed s draws the unlabeled world's scenes from s * WORLD_SEED_SCENES on: seeds differ in their images
WORLD_SEED_SCENES = 10**6


def first_scene(seed: int, replay: bool = False) -> int:
    """The first world scene index run seed ``seed`` draws (its replay scenes with ``replay``).

    >>> first_scene(3), first_scene(3, replay=True)
    (3000000, 1003000000)
    """
    return (REPLAY_START if replay else 0) + seed * WORLD_SEED_SCENES
