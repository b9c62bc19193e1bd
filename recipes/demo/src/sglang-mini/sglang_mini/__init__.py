"""A miniature of SGLang: a scheduler that batches requests by token budget."""

__version__ = "0.5.9"

MAX_BATCH_TOKENS = 4096


def plan_batches(request_lengths, budget=None):
    """Greedy batching: consecutive requests share a batch while the token budget allows."""
    budget = budget or MAX_BATCH_TOKENS
    batches, current, used = [], [], 0
    for i, n in enumerate(request_lengths):
        if current and used + n > budget:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        batches.append(current)
    return batches


def features():
    return ["batching"]
