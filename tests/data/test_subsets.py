"""vaelab.data.subsets: the one rule for a subset of a split, and where two subsets meet."""

import pytest
import torch

from vaelab.data.subsets import common_positions, spread_indices


@pytest.mark.parametrize("n, la, lb", [(10000, None, 2000), (10000, 2000, None),
                                       (10000, 2000, 500), (37, 5, 11), (37, 11, 11),
                                       (8, None, None), (8, 3, 20)])
def test_common_positions_are_the_points_both_subsets_hold(n, la, lb):
    """Against a brute-force search over the two index lists: values indexed by the returned
    positions are the same points of the split, every shared point once, in increasing order."""
    ia, ib = spread_indices(n, la), spread_indices(n, lb)
    shared = sorted(set(ia.tolist()) & set(ib.tolist()))
    pa, pb = common_positions(n, la, lb)
    assert ia[pa].tolist() == ib[pb].tolist() == shared
    points = torch.arange(n) * 3 + 1  # any per-point value
    assert torch.equal(points[ia][pa], points[ib][pb])


def test_a_subset_within_the_whole_split_pairs_on_all_its_points():
    """The rescoring case of the bake-off: 2000 spread test images against all 10,000."""
    pa, pb = common_positions(10000, 2000, None)
    assert torch.equal(pa, torch.arange(2000)) and torch.equal(pb, spread_indices(10000, 2000))
