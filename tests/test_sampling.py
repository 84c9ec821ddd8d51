"""Clients sampled per round by name with a (seed, round) generator: node ids and Python's global RNG do not matter."""

import random

from strategies.sampling import ROUND_STRIDE, seeded_sample

NAMES = [f"client-{i:02d}" for i in range(10)]


def by_node_ids(ids: list[str]) -> dict[str, str]:
    return dict(zip(ids, NAMES, strict=True))


def test_the_same_names_are_sampled_whatever_node_ids_and_global_rng_state():
    first = by_node_ids([str(1000 + i) for i in range(10)])
    second = by_node_ids([str(987654 - 37 * i) for i in range(10)][::-1])
    random.seed(1)
    picked_first = [first[cid] for cid in seeded_sample(first, 4, seed=7, algo_round=3)]
    random.seed(2)
    picked_second = [second[cid] for cid in seeded_sample(second, 4, seed=7, algo_round=3)]
    assert picked_first == picked_second and len(set(picked_first)) == 4
    assert picked_first == sorted(picked_first), "returned in client-name order"


def test_rounds_and_seeds_draw_different_samples_and_round_zero_keeps_the_seed_alone():
    names = by_node_ids([str(i) for i in range(10)])
    samples = {tuple(seeded_sample(names, 3, seed=0, algo_round=r)) for r in range(8)}
    assert len(samples) > 4
    assert seeded_sample(names, 3, seed=0, algo_round=1) != seeded_sample(names, 3, seed=1, algo_round=1)
    order = sorted(names, key=lambda cid: names[cid])
    expected = set(random.Random(5).sample(order, 3))
    assert set(seeded_sample(names, 3, seed=5, algo_round=0)) == expected
    later = set(random.Random(5 + 2 * ROUND_STRIDE).sample(order, 3))
    assert set(seeded_sample(names, 3, seed=5, algo_round=2)) == later


def test_sampling_everyone_returns_every_node():
    names = by_node_ids([str(i) for i in range(10)])
    assert sorted(seeded_sample(names, 10, seed=3, algo_round=4)) == sorted(names)
