from selfsup.seeds import mix_seed


def test_a_seed_is_a_function_of_its_purpose_and_parts():
    assert mix_seed("epoch order", 0, 3) == mix_seed("epoch order", 0, 3)
    seeds = {mix_seed(purpose, seed, epoch) for purpose in ("epoch order", "crop") for seed in range(20)
             for epoch in range(50)}
    assert len(seeds) == 2 * 20 * 50  # no two purposes, seeds or epochs share a stream
    assert mix_seed("crop", 1, 2) != mix_seed("crop", 2, 1)


def test_seeds_are_valid_for_every_generator():
    for parts in [(0,), (2**62, 2**62, 2**62), (-1, 5), (7, 10**9, 10**6)]:
        seed = mix_seed("probe shuffle", *parts)
        assert 0 <= seed < 2**63
