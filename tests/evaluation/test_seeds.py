import pytest

from dpok.evaluation import derive_seeds


def test_seeds_are_deterministic_distinct_and_prefix_stable():
    seeds = derive_seeds(7, 64)
    assert seeds == derive_seeds(7, 64)
    assert len(set(seeds)) == 64 and all(0 <= s < 2**31 for s in seeds)
    assert derive_seeds(7, 16) == seeds[:16]
    assert derive_seeds(8, 16) != seeds[:16]
    # Not the consecutive small seeds a training loop would use.
    assert seeds[:4] != [7, 8, 9, 10]


@pytest.mark.parametrize("base, n", [(-1, 4), (0, 0), (1.5, 4), (0, True)])
def test_bad_seed_arguments_are_refused(base, n):
    with pytest.raises(ValueError):
        derive_seeds(base, n)
