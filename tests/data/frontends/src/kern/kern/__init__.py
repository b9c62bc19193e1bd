"""Stand-in for apex's CUDA extensions."""
