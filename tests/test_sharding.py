"""Deterministic build plans: shard ranges, train/test splits by case, and the image cap."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from medgrit.core.sharding import allocate_images, assign_splits, plan_shards, shard_name


def case_ids(n: int, prefix: str = "case") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


# --- shards ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_cases", "per_shard"), [(10, 3), (9, 3), (1, 5), (7, 1), (100, 16)])
def test_one_image_cases_fill_shards_to_the_target(n_cases, per_shard):
    shards = plan_shards([1] * n_cases, per_shard)

    covered = [i for start, stop in shards for i in range(start, stop)]
    assert covered == list(range(n_cases))
    assert all(stop - start == per_shard for start, stop in shards[:-1])
    assert 1 <= shards[-1][1] - shards[-1][0] <= per_shard


def test_cases_are_packed_by_images_and_never_split():
    # 5 + 4 fit a target of 10; 3 would not; a case of 25 is a shard of its own.
    assert plan_shards([5, 4, 3, 25, 1, 1], 10) == [(0, 2), (2, 3), (3, 4), (4, 6)]


def test_the_case_cap_closes_shards_too():
    assert plan_shards([1] * 10, 100, cases_per_shard=3) == [(0, 3), (3, 6), (6, 9), (9, 10)]


@pytest.mark.parametrize("seed", range(20))
def test_packing_covers_every_case_once_within_the_target(seed):
    rng = random.Random(seed)
    work = [rng.choice([1, 1, 1, 2, 8, 40, 300]) for _ in range(rng.randrange(1, 400))]
    target = rng.choice([1, 7, 64, 200])
    shards = plan_shards(work, target)
    assert [i for a, b in shards for i in range(a, b)] == list(range(len(work)))
    for a, b in shards:
        images = sum(work[a:b])
        assert images <= target or b - a == 1  # only a lone large case exceeds it
    for (a, b), (c, _) in itertools.pairwise(shards):
        assert sum(work[a:b]) + work[c] > target  # greedy: the next case did not fit
    assert plan_shards(work, target) == shards  # deterministic


def test_no_cases_give_no_shards():
    assert plan_shards([], 4) == []


def test_sizes_below_one_are_rejected():
    with pytest.raises(ValueError, match="images_per_shard"):
        plan_shards([1] * 10, 0)
    with pytest.raises(ValueError, match="cases_per_shard"):
        plan_shards([1] * 10, 5, cases_per_shard=0)


def test_shard_name_is_zero_padded():
    assert shard_name(3) == "00003"
    assert shard_name(12345) == "12345"


# --- splits ---------------------------------------------------------------------------------------


def test_split_is_deterministic():
    ids = case_ids(40)
    groups = ["a"] * 40

    assert assign_splits(ids, groups, 0.2) == assign_splits(ids, groups, 0.2)


def test_split_depends_on_the_seed():
    ids = case_ids(40)
    groups = ["a"] * 40

    assert assign_splits(ids, groups, 0.2, seed=0) != assign_splits(ids, groups, 0.2, seed=1)


def test_test_fraction_is_honoured_on_100_cases():
    splits = assign_splits(case_ids(100), ["a"] * 100, 0.11)

    assert Counter(splits) == {"train": 89, "test": 11}


def test_split_is_stratified_per_group():
    ids = case_ids(50, "a") + case_ids(20, "b") + case_ids(10, "c")
    groups = ["A"] * 50 + ["B"] * 20 + ["C"] * 10

    splits = assign_splits(ids, groups, 0.2)

    test_per_group = Counter(g for g, s in zip(groups, splits, strict=True) if s == "test")
    assert test_per_group == {"A": 10, "B": 4, "C": 2}


def test_small_group_gets_at_least_one_test_case():
    splits = assign_splits(["x1", "x2", "y1", "y2", "y3"], ["X", "X", "Y", "Y", "Y"], 0.05)

    assert splits[:2].count("test") == 1
    assert splits[2:].count("test") == 1


def test_a_group_is_never_all_test():
    splits = assign_splits(["x1", "x2"], ["X", "X"], 0.99)

    assert sorted(splits) == ["test", "train"]


def test_single_case_group_stays_train():
    splits = assign_splits(["solo", "a1", "a2", "a3"], ["S", "A", "A", "A"], 0.5)

    assert splits[0] == "train"


def test_zero_fraction_puts_every_case_in_train():
    assert set(assign_splits(case_ids(20), ["a"] * 20, 0.0)) == {"train"}


def test_split_follows_the_case_not_its_position():
    ids = case_ids(30, "a") + case_ids(30, "b")
    groups = ["A"] * 30 + ["B"] * 30
    before = dict(zip(ids, assign_splits(ids, groups, 0.25), strict=True))

    order = list(range(60))
    random.Random(7).shuffle(order)
    shuffled_ids = [ids[i] for i in order]
    after = assign_splits(shuffled_ids, [groups[i] for i in order], 0.25)

    assert dict(zip(shuffled_ids, after, strict=True)) == before


def test_adding_a_group_does_not_move_cases_of_another_group():
    ids = case_ids(30)
    alone = assign_splits(ids, ["A"] * 30, 0.2)

    together = assign_splits([*ids, *case_ids(10, "z")], ["A"] * 30 + ["Z"] * 10, 0.2)

    assert together[:30] == alone


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_test_fraction_out_of_range_is_rejected(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        assign_splits(case_ids(4), ["a"] * 4, fraction)


def test_case_ids_and_groups_of_different_length_are_rejected():
    with pytest.raises(ValueError, match="length"):
        assign_splits(case_ids(4), ["a"] * 3, 0.2)


# --- image cap ------------------------------------------------------------------------------------


def test_cap_is_spread_over_cases():
    assert allocate_images([5, 5, 5, 5], n_cases=4, max_images=10) == [3, 3, 2, 2]


def test_what_a_small_case_leaves_rolls_on_to_the_next():
    assert allocate_images([1, 10, 10], n_cases=3, max_images=12) == [1, 6, 5]


def test_cap_larger_than_available_takes_everything():
    assert allocate_images([2, 3, 4], n_cases=3, max_images=100) == [2, 3, 4]


@pytest.mark.parametrize(
    ("counts", "cap"),
    [([7, 0, 3, 12, 1], 9), ([1] * 10, 4), ([50, 50], 99), ([0, 0, 5], 3), ([4, 4, 4], 12)],
)
def test_cap_is_never_exceeded(counts, cap):
    taken = allocate_images(counts, n_cases=len(counts), max_images=cap)

    assert sum(taken) <= cap
    assert all(0 <= t <= c for t, c in zip(taken, counts, strict=False))


@pytest.mark.parametrize(
    ("counts", "cap"), [([0, 0, 5], 3), ([1, 2, 50], 30), ([4, 4, 4], 12), ([50, 50], 99)]
)
def test_whole_cap_is_used_when_later_cases_have_room(counts, cap):
    assert sum(allocate_images(counts, n_cases=len(counts), max_images=cap)) == cap


def test_unspent_budget_goes_back_to_cases_with_spare_images():
    # The last case cannot take its share: the image goes back to the first case with spares.
    assert allocate_images([7, 0, 3, 12, 1], n_cases=5, max_images=9) == [3, 0, 3, 2, 1]
    assert sum(allocate_images([1, 1, 40, 1, 1, 1], n_cases=6, max_images=30)) == 30
    assert allocate_images([2, 2], n_cases=2, max_images=10) == [2, 2]


def test_small_cap_gives_one_image_to_each_of_the_first_cases():
    assert allocate_images([100] * 10, n_cases=10, max_images=3) == [1, 1, 1]


def test_zero_cap_takes_nothing():
    assert allocate_images([5, 5], n_cases=2, max_images=0) == []


def test_counts_are_read_lazily():
    read: list[int] = []

    def counts():
        for i in range(1000):
            read.append(i)
            yield 100

    taken = allocate_images(counts(), n_cases=1000, max_images=300)

    assert sum(taken) == 300
    assert len(read) < 1000


def test_counts_stop_being_read_once_the_budget_is_spent():
    read: list[int] = []

    def counts():
        for i in range(10):
            read.append(i)
            yield 100

    taken = allocate_images(counts(), n_cases=10, max_images=3)

    assert taken == [1, 1, 1]
    assert len(read) == 3
