"""Step 1: what the host is (CPU flags, NUMA, RAM, GPUs), read from the machine or from captures."""
