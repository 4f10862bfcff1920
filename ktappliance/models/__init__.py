"""Models: the catalogue, fetching, the GGUF header check and whether a model fits a host."""
