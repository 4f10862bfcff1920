"""Step 2: the matrix of what can be built (targets.yaml) and the target a host gets."""
