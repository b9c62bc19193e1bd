"""A miniature of Megatron-LM: splitting a weight matrix across tensor-parallel ranks."""

__version__ = "0.16.0rc0"


def shard_rows(n_rows, world_size):
    """Row ranges [start, end) for each tensor-parallel rank."""
    base, extra = divmod(n_rows, world_size)
    out, start = [], 0
    for rank in range(world_size):
        end = start + base + (1 if rank < extra else 0)
        out.append((start, end))
        start = end
    return out


def quantise_weights(values, group_size=32):
    """Fake-quantise weights to int4 (the training path slime uses for INT4 QAT)."""
    import int4qat

    return int4qat.reference(values, group_size)
