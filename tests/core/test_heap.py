import gc

from ember.core.heap import frozen_heap


def test_the_heap_is_frozen_inside_the_block_and_given_back_after():
    assert gc.get_freeze_count() == 0
    alive = [object() for _ in range(10)]  # noqa: F841 (kept alive across the block)
    with frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        made_inside = [[] for _ in range(5)]
        assert all(gc.is_tracked(x) for x in made_inside)
        # only what was alive at the start is frozen (a frozen object that dies, e.g. in another thread, leaves it)
        assert gc.get_freeze_count() <= frozen
    assert gc.get_freeze_count() == 0


def test_a_caller_that_froze_its_own_heap_keeps_it_frozen():
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        made_after = [[] for _ in range(1000)]  # noqa: F841 (alive across the block; frozen only if it froze again)
        with frozen_heap():
            assert 0 < gc.get_freeze_count() <= before
        assert 0 < gc.get_freeze_count() <= before  # not unfrozen on exit either
    finally:
        gc.unfreeze()


def test_the_heap_is_given_back_when_the_block_raises():
    try:
        with frozen_heap():
            raise ValueError("bad record")
    except ValueError:
        pass
    assert gc.get_freeze_count() == 0
