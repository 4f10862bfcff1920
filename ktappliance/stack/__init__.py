"""Step 6: the compose stack's settings and the load command that drives a running stack."""
