"""Stand-in for megatron.core.datasets with its compiled helper."""
